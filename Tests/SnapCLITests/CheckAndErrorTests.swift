import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct CheckTests {
    @Test func flippedByteIsFoundAndNamed() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/data.bin", pseudoRandomBytes(100_000, seed: 8))
        try snap("--repo", repo, "init")
        let id = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)

        // The object holding data.bin: the name is the SHA-256 of the file's bytes (one chunk).
        let name = ObjectID(hashing: pseudoRandomBytes(100_000, seed: 8)).hex
        let path = repo + "/objects/" + name.prefix(2) + "/" + name
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        #expect(try snap("--repo", repo, "check").status == 0, "structure is intact; only data is damaged")
        let check = try snap("--repo", repo, "check", "--read-data")
        #expect(check.status == 1)
        let checkJSON = try snap("--repo", repo, "check", "--read-data", "--json")
        #expect(checkJSON.status == 1)
        #expect(checkJSON.stderr.isEmpty, "the JSON says it all: \(checkJSON.stderr)")
        #expect(check.stdout.contains(name), "\(check.stdout)")
        #expect(check.stdout.contains(String(id.prefix(8))))

        // A missing object fails the structural check and names the snapshot too.
        try FileManager.default.removeItem(atPath: path)
        let missing = try snap("--repo", repo, "check")
        #expect(missing.status == 1)
        #expect(missing.stdout.contains("\(name) is missing") && missing.stdout.contains(String(id.prefix(8))))

        // The way back (OPERATIONS.md): with the damaged object gone, the next snapshot reads the
        // unchanged file again instead of trusting the files cache, stores the object, and the old
        // snapshot is whole again.
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
        let restored = folder.file("restored")
        #expect(try snap("--repo", repo, "restore", id, "--no-db", "--storage-to", restored).status == 0)
        #expect(
            FileManager.default.contents(atPath: restored + "/data.bin") == Data(pseudoRandomBytes(100_000, seed: 8)))
    }

    @Test func readDataSubsetReadsSome() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        for index in 0..<20 { try writeFile(storage + "/f\(index)", pseudoRandomBytes(1000, seed: UInt64(index))) }
        try snap("--repo", repo, "init")
        try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)
        let check = try snap("--repo", repo, "check", "--read-data-subset", "50%")
        #expect(check.status == 0)
        #expect(check.stdout.contains("read 11 object(s)"), "\(check.stdout)")
        #expect(try snap("--repo", repo, "check", "--read-data-subset", "150").status == 2)
    }
}

@Suite struct ErrorTests {
    @Test func badInputIsOneLineAndChangesNothing() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")

        let notRepository = try snap("--repo", repo, "list")
        #expect(notRepository.status == 1)
        #expect(notRepository.stderr.contains(repo) && notRepository.stderr.contains("snap init"))
        #expect(notRepository.stderr.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: repo))

        #expect(try snap("--repo", repo, "init").status == 0)
        let again = try snap("--repo", repo, "init")
        #expect(again.status == 1)
        #expect(again.stderr.contains("exists already"))
        #expect(again.stderr.split(separator: "\n").count == 1)

        let missing = try snap("--repo", repo, "snapshot", "--no-db", "--storage", folder.file("nope"))
        #expect(missing.status == 1)
        #expect(missing.stderr.contains(folder.file("nope")) && missing.stderr.contains("does not exist"))
        #expect(missing.stderr.split(separator: "\n").count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
        #expect(try objectCount(repo) == 0)

        let environment = try snap("list", environment: ["SNAP_REPO": repo])
        #expect(environment.status == 0)
        #expect(environment.stdout.contains("0 snapshot(s)"))

        let unknown = try snap("--repo", repo, "show", "abcd")
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("no snapshot id starts with abcd"))
    }

    @Test func unreadableFilesAreRecordedAndExitThree() throws {
        let folder = try TemporaryDirectory()
        chmod(folder.path, 0o755)
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/readable.txt", Array("fine".utf8))
        try writeFile(storage + "/locked.txt", Array("secret".utf8), mode: 0o000)
        #expect(mkfifo(storage + "/a-fifo", 0o644) == 0)
        // Root reads any file, so the snapshot runs as an unprivileged user when the tests are root.
        let user: String? = getuid() == 0 ? "nobody" : nil
        if user != nil { try run("/bin/chown", ["-R", "nobody", folder.path]) }

        #expect(try run(snapBinary, ["--repo", repo, "init"], asUser: user).status == 0)
        let result = try run(snapBinary, ["--repo", repo, "snapshot", "--no-db", "--storage", storage], asUser: user)
        #expect(result.status == 3, "\(result.stderr)")
        #expect(!result.stderr.contains("invalid arguments"), "\(result.stderr)")
        #expect(result.stderr.contains("locked.txt"))
        #expect(result.stderr.contains("a-fifo"))
        let id = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 64)

        let show = try run(snapBinary, ["--repo", repo, "show", id], asUser: user)
        #expect(show.stdout.contains("locked.txt") && show.stdout.contains("errors    2"))
        let restored = folder.file("restored")
        #expect(
            try run(snapBinary, ["--repo", repo, "restore", id, "--no-db", "--storage-to", restored], asUser: user)
                .status == 0)
        #expect(FileManager.default.fileExists(atPath: restored + "/readable.txt"))
        #expect(!FileManager.default.fileExists(atPath: restored + "/locked.txt"))
    }

    /// Every problem is said on stderr, but the record lists the first thousand and counts the
    /// rest, so that it stays small whatever the folder holds.
    @Test func theRecordListsAThousandProblemsAndCountsTheRest() throws {
        let folder = try TemporaryDirectory()
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        for index in 0..<1005 { #expect(mkfifo(storage + "/fifo-\(index)", 0o644) == 0) }
        try snap("--repo", folder.file("repo"), "init")
        let result = try snap("--repo", folder.file("repo"), "snapshot", "--no-db", "--storage", storage, "--json")
        #expect(result.status == 3)
        #expect(result.stderr.components(separatedBy: "fifo-").count - 1 == 1005)
        #expect(result.stderr.contains("recorded with 1005 problem(s)"), "\(result.stderr.suffix(300))")
        let id = (try parseJSON(result.stdout) as? [String: Any])?["id"] as? String ?? ""
        let shown =
            try parseJSON(try snap("--repo", folder.file("repo"), "show", id, "--json").stdout) as? [String: Any]
        let errors = shown?["errors"] as? [String] ?? []
        #expect(errors.count == 1001)
        #expect(errors.last == "5 more problem(s) like these, not listed")
    }
}

@Suite struct RepositoryDamageTests {
    @Test func foreignFilesTruncatedRecordsAndNewerConfigGiveClearMessages() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/a.txt", Array("a".utf8))
        try snap("--repo", repo, "init")
        let id = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)

        // Foreign files: named as warnings, ignored, no failure.
        try writeFile(repo + "/NOTES.txt", Array("mine".utf8))
        try FileManager.default.createDirectory(atPath: repo + "/objects/zz", withIntermediateDirectories: true)
        let check = try snap("--repo", repo, "check")
        #expect(check.status == 0, "\(check.stderr)")
        #expect(check.stderr.contains("NOTES.txt") && check.stderr.contains("objects/zz"))

        // A truncated record: named, the command does not crash, check fails.
        let record = repo + "/snapshots/\(id).json"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: record))
        try bytes.prefix(40).write(to: URL(fileURLWithPath: record))
        let damaged = try snap("--repo", repo, "check")
        #expect(damaged.status == 1)
        #expect(damaged.stdout.contains(id) && damaged.stdout.contains("damaged"), "\(damaged.stdout)")
        let list = try snap("--repo", repo, "list")
        #expect(list.status == 0 && list.stderr.contains(id))

        // A config from a newer format: one line naming the version and the fix.
        let config = repo + "/config"
        let text = try String(contentsOfFile: config, encoding: .utf8)
            .replacingOccurrences(of: "\"version\" : 1", with: "\"version\" : 7")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let newer = try snap("--repo", repo, "list")
        #expect(newer.status == 1)
        #expect(newer.stderr.contains("version 7") && newer.stderr.contains("upgrade snap"), "\(newer.stderr)")
        #expect(newer.stderr.split(separator: "\n").count == 1)
    }
}
