import Foundation
import SnapCore
import SnapTestSupport
import Testing

@Suite struct PruneTests {
    /// A repository with two snapshots of a small tree, and garbage: objects no record needs (as an
    /// interrupted run leaves them) and temporary files.
    private func makeRepository(_ folder: TemporaryDirectory) throws -> (repo: String, storage: String) {
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/kept.bin", pseudoRandomBytes(300_000, seed: 1))
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        try writeFile(storage + "/second.bin", pseudoRandomBytes(200_000, seed: 2))
        #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
        return (repo, storage)
    }

    private func addGarbage(_ repo: String) throws -> (objects: [String], leftovers: [String]) {
        let repository = try Repository.open(at: repo)
        let compressor = ZstdCompressor(level: 3)
        var names: [String] = []
        for seed in 10..<15 {
            let content = pseudoRandomBytes(5000, seed: UInt64(seed))
            let id = ObjectID(hashing: content)
            try repository.store.put(id, encoded: content.withUnsafeBytes { compressor.compress($0) })
            names.append(repo + "/objects/" + id.hex.prefix(2) + "/" + id.hex)
        }
        try repository.store.flush()
        let leftovers = [
            repo + "/objects/ab/.tmp-interrupted", repo + "/snapshots/.tmp-record", repo + "/.tmp-config-x",
        ]
        try FileManager.default.createDirectory(atPath: repo + "/objects/ab", withIntermediateDirectories: true)
        for path in leftovers { try writeFile(path, [1, 2, 3]) }
        return (names, leftovers)
    }

    @Test func pruneDeletesGarbageAndKeepsEverySnapshotWhole() throws {
        let folder = try TemporaryDirectory()
        let (repo, storage) = try makeRepository(folder)
        let before = try objectCount(repo)
        let garbage = try addGarbage(repo)
        #expect(try objectCount(repo) == before + 5)

        let dryRun = try snap("--repo", repo, "prune", "--dry-run")
        #expect(dryRun.status == 0 && dryRun.stdout.contains("would delete 5"))
        #expect(try objectCount(repo) == before + 5)

        let prune = try snap("--repo", repo, "prune", "--json")
        #expect(prune.status == 0, "\(prune.stderr)")
        let report = try parseJSON(prune.stdout) as? [String: Any]
        #expect(report?["objects_deleted"] as? Int == 5)
        #expect(report?["leftovers_deleted"] as? Int == 3)
        #expect((report?["bytes_freed"] as? Int ?? 0) > 0)
        #expect(try objectCount(repo) == before)
        for path in garbage.objects + garbage.leftovers { #expect(!FileManager.default.fileExists(atPath: path)) }

        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
        let restored = folder.file("restored")
        #expect(try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", restored).status == 0)
        #expect(differences(try readTree(storage), try readTree(restored)).isEmpty)
    }

    /// A stray file with a two-letter name in objects/ is not a folder of objects: prune leaves it
    /// alone instead of failing on it every run.
    @Test func pruneSkipsAStrayFileAmongTheObjectFolders() throws {
        let folder = try TemporaryDirectory()
        let (repo, _) = try makeRepository(folder)
        let garbage = try addGarbage(repo)
        try writeFile(repo + "/objects/zz", [1])
        let prune = try snap("--repo", repo, "prune")
        #expect(prune.status == 0, "\(prune.stderr)")
        #expect(FileManager.default.fileExists(atPath: repo + "/objects/zz"))
        for path in garbage.objects + garbage.leftovers { #expect(!FileManager.default.fileExists(atPath: path)) }
    }

    @Test func pruneRefusesWhileARecordIsDamaged() throws {
        let folder = try TemporaryDirectory()
        let (repo, _) = try makeRepository(folder)
        _ = try addGarbage(repo)
        let count = try objectCount(repo)
        let record = try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").first {
            $0.hasSuffix(".json")
        }!
        try writeFile(repo + "/snapshots/" + record, Array("{ truncated".utf8))
        let prune = try snap("--repo", repo, "prune")
        #expect(prune.status == 1)
        #expect(prune.stderr.contains("refusing to prune"), "\(prune.stderr)")
        #expect(prune.stderr.split(separator: "\n").count == 1)
        #expect(try objectCount(repo) == count)
    }

    @Test func pruneWaitsForOrFailsOnABusyRepository() throws {
        let folder = try TemporaryDirectory()
        let (repo, _) = try makeRepository(folder)
        // Another process holds a shared lock, as a running snapshot does, for ten seconds.
        let holder = try lockHolder(repo + "/lock", shared: true, seconds: 10, readyFile: folder.file("held-1"))
        defer { holder.waitUntilExit() }

        let busy = try snap("--repo", repo, "prune")
        #expect(busy.status == 4)
        #expect(busy.stderr.contains("busy") && busy.stderr.contains("--wait"), "\(busy.stderr)")
        #expect(busy.stderr.split(separator: "\n").count == 1)

        let waited = try snap("--repo", repo, "prune", "--wait", "30")
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(waited.stderr.contains("waiting"))

        // A killed holder leaves no stale lock: the kernel drops it with the process.
        let killed = try lockHolder(repo + "/lock", shared: false, seconds: 60, readyFile: folder.file("held-2"))
        #expect(try snap("--repo", repo, "prune").status == 4)
        kill(killed.processIdentifier, SIGKILL)
        killed.waitUntilExit()
        #expect(try snap("--repo", repo, "prune").status == 0)
        #expect(try snap("--repo", repo, "list").status == 0)
    }
}

/// One process (no children left behind when it is killed) holding a `flock` on `path` for
/// `seconds` from the moment it has it; returns once `readyFile` says it has it (a loaded machine
/// may take long to start Python).
func lockHolder(_ path: String, shared: Bool, seconds: Int, readyFile: String) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    process.arguments = [
        "-c",
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.\(shared ? "LOCK_SH" : "LOCK_EX")); open(sys.argv[2], 'w').close(); time.sleep(\(seconds))",
        path, readyFile,
    ]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(60)
    while !FileManager.default.fileExists(atPath: readyFile) {
        guard process.isRunning, Date() < deadline else {
            process.terminate()
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: readyFile])
        }
        usleep(10_000)
    }
    return process
}
