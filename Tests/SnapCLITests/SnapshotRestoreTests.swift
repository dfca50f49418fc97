import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Builds a storage tree with every case snap must restore exactly.
func makeAwkwardTree(at root: String) throws {
    let fm = FileManager.default
    try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
    let base: Int64 = 1_600_000_000_000_000_000
    try writeFile(root + "/plain.txt", Array("hello\n".utf8), mtime: base + 123_456_789)
    try writeFile(root + "/script.sh", Array("#!/bin/sh\necho hi\n".utf8), mode: 0o755, mtime: base + 1)
    try writeFile(root + "/secret", Array("s3cr3t".utf8), mode: 0o600, mtime: base + 2)
    try writeFile(root + "/read-only", Array("ro".utf8), mode: 0o400, mtime: base + 3)
    try writeFile(root + "/group-writable", Array("gw".utf8), mode: 0o664, mtime: base + 4)
    try writeFile(root + "/empty-file", [], mtime: base + 5)
    try writeFile(root + "/name with  spaces .txt", Array("spaces".utf8), mtime: base + 6)
    try fm.createDirectory(atPath: root + "/ünïcødé 日本語", withIntermediateDirectories: true)
    try writeFile(root + "/ünïcødé 日本語/ファイル 🎉.txt", Array("utf8".utf8), mtime: base + 7)
    // Two names Unicode calls equal but whose bytes differ (NFC and NFD): two files.
    try writeFile(root + "/ünïcødé 日本語/\u{E9}.txt", Array("nfc".utf8), mtime: base + 8)
    try writeFile(root + "/ünïcødé 日本語/e\u{301}.txt", Array("nfd".utf8), mtime: base + 9)
    // The same for folders, each with a file of the same name: they must not be taken for one.
    for (folder, content) in [("\u{E9}-folder", "in nfc"), ("e\u{301}-folder", "in nfd")] {
        try fm.createDirectory(atPath: root + "/ünïcødé 日本語/" + folder, withIntermediateDirectories: true)
        try writeFile(root + "/ünïcødé 日本語/" + folder + "/f.txt", Array(content.utf8), mtime: base + 9)
        try setTime(root + "/ünïcødé 日本語/" + folder, base + 9)
    }
    try fm.createDirectory(atPath: root + "/empty-folder", withIntermediateDirectories: true)
    chmod(root + "/empty-folder", 0o750)
    // A setgid folder (its files take its group) comes back as it was; setgid files do not (below).
    try fm.createDirectory(atPath: root + "/shared-group", withIntermediateDirectories: true)
    chmod(root + "/shared-group", 0o2770)

    // Deep and long paths: 30 levels, a 250-byte name, over 3,000 bytes in all (PATH_MAX is 4096).
    var deep = root + "/deep"
    for level in 0..<30 { deep += "/level-\(level)-" + String(repeating: "x", count: 90) }
    try fm.createDirectory(atPath: deep, withIntermediateDirectories: true)
    try writeFile(deep + "/" + String(repeating: "L", count: 250), Array("deep".utf8), mtime: base + 10)

    // Larger than the biggest chunk (4 MiB), and duplicates of it and of small files.
    let big = pseudoRandomBytes(9 << 20 + 12345, seed: 1)
    try writeFile(root + "/big.bin", big, mtime: base + 11)
    try writeFile(root + "/big-copy.bin", big, mtime: base + 12)
    try fm.createDirectory(atPath: root + "/many", withIntermediateDirectories: true)
    for index in 0..<1500 {
        try writeFile(
            root + "/many/file-\(index).txt", Array("small file \(index % 1000)\n".utf8), mtime: base + Int64(index))
    }

    // Symlinks: relative, absolute, dangling, to a folder; never followed.
    try fm.createSymbolicLink(atPath: root + "/link-relative", withDestinationPath: "plain.txt")
    try fm.createSymbolicLink(atPath: root + "/link-absolute", withDestinationPath: "/etc/hostname")
    try fm.createSymbolicLink(atPath: root + "/link-dangling", withDestinationPath: "does/not/exist")
    try fm.createSymbolicLink(atPath: root + "/link-folder", withDestinationPath: "ünïcødé 日本語")
    try setTime(root + "/link-relative", base + 13)

    // Folder times last: creating their content changed them.
    try setTime(root + "/empty-folder", base + 14)
    try setTime(root + "/many", base + 15)
    try setTime(root + "/shared-group", base + 18)
    try setTime(root + "/ünïcødé 日本語", base + 16)
    try setTime(root, base + 17)
}

@Suite struct SnapshotRestoreTests {
    @Test func everyKindOfEntryRestoresExactly() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        let restored = folder.file("restored")
        try makeAwkwardTree(at: storage)
        let source = try readTree(storage)

        #expect(try snap("--repo", repo, "init").status == 0)
        let snapshot = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage, "--tag", "first")
        #expect(snapshot.status == 0, "\(snapshot.stderr)")
        let id = snapshot.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 64)

        let restore = try snap("--repo", repo, "restore", String(id.prefix(6)), "--no-db", "--storage-to", restored)
        #expect(restore.status == 0, "\(restore.stderr)")
        let diff = differences(source, try readTree(restored))
        #expect(diff.isEmpty, "\(diff.prefix(20).joined(separator: "\n"))")
        #expect(source.count > 1550)

        // Repository files are private: folders 0700, files 0600.
        for path in [repo, repo + "/objects", repo + "/snapshots"] {
            #expect((try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) == 0o700)
        }
        for file in [repo + "/config", repo + "/snapshots/\(id).json"] {
            #expect((try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        }
    }

    @Test func unchangedTreeAddsNoObjects() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage + "/a", withIntermediateDirectories: true)
        try writeFile(storage + "/a/one.bin", pseudoRandomBytes(3 << 20, seed: 4))
        try writeFile(storage + "/two.txt", Array("two".utf8))
        try snap("--repo", repo, "init")
        let first = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage, "--json")
        #expect(first.status == 0)
        let objectsAfterFirst = try objectCount(repo)
        let second = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage, "--json")
        #expect(second.status == 0)
        let json = try parseJSON(second.stdout) as? [String: Any]
        let totals = json?["totals"] as? [String: Any]
        #expect(totals?["new_objects"] as? Int == 0)
        #expect(totals?["new_bytes"] as? Int == 0)
        #expect(try objectCount(repo) == objectsAfterFirst)
        let list = try snap("--repo", repo, "list", "--json")
        let snapshots = try parseJSON(list.stdout) as? [[String: Any]]
        #expect(snapshots?.count == 2)
        #expect(snapshots?.allSatisfy { $0["id"] is String && $0["time"] is String && $0["tags"] is [Any] } == true)
    }

    @Test func cleanRestoreMirrorsTheSnapshot() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        let target = folder.file("target")
        let fm = FileManager.default
        try fm.createDirectory(atPath: storage + "/keep", withIntermediateDirectories: true)
        try writeFile(storage + "/keep/file.txt", Array("original".utf8), mtime: 1_000_000_000_000_000_000)
        try writeFile(storage + "/was-file", Array("file".utf8))
        try fm.createDirectory(atPath: storage + "/was-folder", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: storage + "/link", withDestinationPath: "keep")
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        let expected = try readTree(storage)

        // A target that has drifted: extra files, changed content, kinds swapped.
        try fm.createDirectory(atPath: target + "/keep/extra-folder", withIntermediateDirectories: true)
        try writeFile(target + "/keep/file.txt", Array("changed later".utf8))
        try writeFile(target + "/keep/extra-folder/new.txt", Array("new".utf8))
        try writeFile(target + "/extra.txt", Array("extra".utf8))
        try fm.createDirectory(atPath: target + "/was-file/inside", withIntermediateDirectories: true)
        try writeFile(target + "/was-folder", Array("now a file".utf8))
        try fm.createSymbolicLink(atPath: target + "/link", withDestinationPath: "/")
        let before = try readTree(target)

        let refused = try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", target)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("not empty") && refused.stderr.contains("--clean"))
        #expect(refused.stderr.split(separator: "\n").count == 1)
        #expect(differences(before, try readTree(target)).isEmpty, "a refused restore changed the target")

        let clean = try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", target, "--clean")
        #expect(clean.status == 0, "\(clean.stderr)")
        let diff = differences(expected, try readTree(target))
        #expect(diff.isEmpty, "\(diff.joined(separator: "\n"))")
    }

    @Test func restoreNeverWritesOutsideTheTarget() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let outside = folder.file("outside")
        let target = folder.file("target")
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let repository = try Repository.initialize(at: repo)

        // Hand-made hostile manifests: a file below a symlink, and paths with `..`.
        func commitHostile(_ entries: [ManifestEntry]) throws -> Snapshot {
            let content = Array("pwned".utf8)
            let id = ObjectID(hashing: content)
            let compressor = ZstdCompressor(level: 3)
            try repository.store.put(id, encoded: content.withUnsafeBytes { compressor.compress($0) })
            var manifest: [UInt8] = []
            for var entry in entries {
                if entry.kind == .file {
                    entry.chunks = [id]
                    entry.size = UInt64(content.count)
                }
                manifest += entry.encodedLine()
            }
            let manifestID = ObjectID(hashing: manifest)
            try repository.store.put(manifestID, encoded: manifest.withUnsafeBytes { compressor.compress($0) })
            let record = SnapshotRecord(
                time: .now(), host: "h", tags: [], program: "test", sources: .init(storage: "/s"),
                manifest: StreamReference(size: UInt64(manifest.count), chunks: [manifestID]), totals: .init(),
                errors: [])
            return try repository.commit(record)
        }
        let root = ManifestEntry(kind: .directory, path: ".", mode: 0o755)
        let cases: [[ManifestEntry]] = [
            [
                root, ManifestEntry(kind: .symlink, path: "evil", target: outside),
                ManifestEntry(kind: .file, path: "evil/pwned", mode: 0o644),
            ],
            [root, ManifestEntry(kind: .file, path: "../pwned", mode: 0o644)],
            [
                root, ManifestEntry(kind: .directory, path: "a", mode: 0o755),
                ManifestEntry(kind: .file, path: "a/../../pwned", mode: 0o644),
            ],
            [root, ManifestEntry(kind: .file, path: "/tmp/pwned", mode: 0o644)],
            [root, ManifestEntry(kind: .file, path: "no-parent/pwned", mode: 0o644)],
            // symlinkat would stop at the NUL and make a link to "..".
            [root, ManifestEntry(kind: .symlink, path: "up", target: "..\u{0}/x")],
            // Out of the depth-first order, listed twice, or a folder's entry after another's:
            // the restore checks the order, which rules these out with one path in memory.
            [
                root, ManifestEntry(kind: .file, path: "b", mode: 0o644),
                ManifestEntry(kind: .file, path: "a", mode: 0o644),
            ],
            [
                root, ManifestEntry(kind: .file, path: "a", mode: 0o644),
                ManifestEntry(kind: .file, path: "a", mode: 0o644),
            ],
            [
                root, ManifestEntry(kind: .directory, path: "a", mode: 0o755),
                ManifestEntry(kind: .file, path: "b", mode: 0o644),
                ManifestEntry(kind: .file, path: "a/x", mode: 0o644),
            ],
            [
                root, ManifestEntry(kind: .symlink, path: "evil", target: outside),
                ManifestEntry(kind: .directory, path: "evil", mode: 0o755),
                ManifestEntry(kind: .file, path: "evil/pwned", mode: 0o644),
            ],
            [root, root, ManifestEntry(kind: .file, path: "pwned", mode: 0o644)],
        ]
        for entries in cases {
            let hostile = try commitHostile(entries)
            let result = try snap("--repo", repo, "restore", hostile.id, "--no-db", "--storage-to", target)
            #expect(result.status == 1)
            #expect(result.stderr.contains("unsafe"), "\(result.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: folder.file("pwned")))
            #expect(!FileManager.default.fileExists(atPath: "/tmp/pwned"))
            let written = (try? FileManager.default.contentsOfDirectory(atPath: target)) ?? []
            #expect(written.isEmpty, "restore wrote \(written) before refusing")
        }
    }

    /// Owners are not recorded, so restored files belong to whoever restores; a setuid or setgid
    /// bit would turn, restored by root, a file the folder's user planted into a root program.
    @Test func setIDBitsOfFilesAreNotRestored() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/setuid", Array("#!/bin/sh\n".utf8), mode: 0o4755)
        try writeFile(storage + "/setgid", Array("#!/bin/sh\n".utf8), mode: 0o2711)
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        let restored = folder.file("restored")
        #expect(try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", restored).status == 0)
        let mode = { (name: String) in
            try FileManager.default.attributesOfItem(atPath: restored + "/" + name)[.posixPermissions] as? Int
        }
        #expect(try mode("setuid") == 0o755)
        #expect(try mode("setgid") == 0o711)
    }

    /// --clean leaves nothing the snapshot lacks, names that are not UTF-8 included, and refuses,
    /// changing nothing, a target that holds the repository or an object that is missing.
    @Test func cleanRestoreRemovesForeignNamesAndRefusesWhatWouldLoseData() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("app/repo")
        let storage = folder.file("storage")
        let target = folder.file("target")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/kept.bin", pseudoRandomBytes(300_000, seed: 9))
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)

        // Latin-1 names, a file and a folder holding one, which no String can hold.
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        let latin1File = Array(target.utf8) + Array("/caf".utf8) + [0xE9]
        let latin1Folder = Array(target.utf8) + Array("/d".utf8) + [0xE8]
        func cPath(_ bytes: [UInt8]) -> [CChar] { (bytes + [0]).map { CChar(bitPattern: $0) } }
        #expect(open(cPath(latin1File), O_WRONLY | O_CREAT, 0o644) >= 0)
        #expect(mkdir(cPath(latin1Folder), 0o755) == 0)
        #expect(open(cPath(latin1Folder + Array("/x".utf8)), O_WRONLY | O_CREAT, 0o644) >= 0)
        let clean = try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", target, "--clean")
        #expect(clean.status == 0, "\(clean.stderr)")
        #expect(access(cPath(latin1File), F_OK) != 0 && access(cPath(latin1Folder), F_OK) != 0)
        #expect(differences(try readTree(storage), try readTree(target)).isEmpty)

        // The repository's own folder, or one above it, as the target, however it is spelled.
        for holder in [folder.file("app"), repo, folder.file("app/new/../repo"), folder.file("target/../app")] {
            let refused = try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", holder, "--clean")
            #expect(refused.status == 1)
            #expect(
                refused.stderr.contains("holds the repository") || refused.stderr.contains("cannot tell where"),
                "\(refused.stderr)")
        }
        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)

        // An object gone: refused before the drifted target loses anything.
        try writeFile(target + "/drifted.txt", Array("newer".utf8))
        let before = try readTree(target)
        let repository = try Repository.open(at: repo)
        let record = try repository.snapshots().snapshots.last!.record
        var chunks: [ObjectID] = []
        try ManifestReader(repository: repository).forEachEntry(record.manifest) {
            if $0.path == "kept.bin" { chunks = $0.chunks }
        }
        let victim = chunks.last!.hex
        try FileManager.default.removeItem(atPath: "\(repo)/objects/\(victim.prefix(2))/\(victim)")
        let missing = try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", target, "--clean")
        #expect(missing.stderr.contains("missing"), "\(missing.stderr)")
        #expect(missing.status != 0)
        #expect(differences(before, try readTree(target)).isEmpty, "a refused restore changed the target")
    }

    /// The repository bind-mounted inside the target is found by device and inode, whatever its
    /// path: --clean refuses before removing anything through it.
    @Test(
        .enabled(
            if: geteuid() == 0 || TestCluster.isCI,
            "a bind mount needs root; run the tests as root to cover it (under CI=true this runs and fails)"))
    func cleanRestoreNeverRemovesThroughABindMountOfTheRepository() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        let target = folder.file("target")
        try FileManager.default.createDirectory(atPath: storage + "/kept", withIntermediateDirectories: true)
        try writeFile(storage + "/kept/a.txt", Array("a".utf8))
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        let objects = try objectCount(repo)
        for inside in ["extra-mount", "kept"] {
            try FileManager.default.createDirectory(atPath: target + "/" + inside, withIntermediateDirectories: true)
            let refused = try withBindMount(repo, at: target + "/" + inside) {
                try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", target, "--clean")
            }
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("reaches the repository"), "\(refused.stderr)")
            #expect(try objectCount(repo) == objects)
            #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
        }
    }
}
