import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A repository keeps one owner: root writing in another user's repository gives what it creates to
/// that user, a writer never runs without the repository's real lock, and a permission error is
/// reported as one (with the command that fixes it), never as damage. These run snap as `nobody`
/// beside root, so they need root.
@Suite(.enabled(if: geteuid() == 0 || TestCluster.isCI, "running snap as another user needs root"))
struct OwnershipTests {
    /// A folder `nobody` can reach, with a storage folder of 20 small distinct files and a
    /// repository `nobody` made and took one snapshot into.
    private func nobodysRepository(_ folder: TemporaryDirectory) throws -> (
        repo: String, storage: String, snapshot: String
    ) {
        let (repo, storage) = try reachableFolder(folder, files: 20)
        try run("/bin/chown", ["-R", "nobody", folder.path])
        try #require(try run(snapBinary, ["--repo", repo, "init"], asUser: "nobody").status == 0)
        let first = try run(
            snapBinary, ["--repo", repo, "snapshot", "--no-db", "--storage", storage], asUser: "nobody")
        try #require(first.status == 0, "\(first.stderr)")
        return (repo, storage, first.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// The user id of `nobody`.
    private var nobody: uid_t { getpwnam("nobody")!.pointee.pw_uid }

    /// Paths under `root` (itself included) whose owner is not `uid`.
    private func notOwned(by uid: uid_t, under root: String) throws -> [String] {
        var strays: [String] = []
        var status = stat()
        if lstat(root, &status) == 0, status.st_uid != uid { strays.append(root) }
        for path in try FileManager.default.subpathsOfDirectory(atPath: root) {
            guard lstat(root + "/" + path, &status) == 0 else { continue }
            if status.st_uid != uid { strays.append(path) }
        }
        return strays
    }

    @Test func aRunAsRootLeavesTheRepositoryToItsOwner() throws {
        let folder = try TemporaryDirectory()
        let (repo, storage, _) = try nobodysRepository(folder)
        let foldersBefore = try FileManager.default.contentsOfDirectory(atPath: repo + "/objects").count
        // Root takes the next snapshot (a cron job as root, say) of new files: new objects, new
        // object folders, a new record, and the lock file, which a repository may come without.
        for index in 0..<40 {
            try writeFile(storage + "/second-\(index).bin", pseudoRandomBytes(3000, seed: UInt64(1000 + index)))
        }
        try FileManager.default.removeItem(atPath: repo + "/lock")
        let asRoot = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)
        #expect(asRoot.status == 0, "\(asRoot.stderr)")
        let id = asRoot.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/objects").count > foldersBefore)
        #expect(FileManager.default.fileExists(atPath: repo + "/lock"))
        #expect(try notOwned(by: nobody, under: repo).isEmpty, "root left files of its own in nobody's repository")

        // The owner can do everything with it.
        let restored = folder.file("restored")
        let restore = try run(
            snapBinary, ["--repo", repo, "restore", id, "--no-db", "--storage-to", restored], asUser: "nobody")
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(differences(try readTree(storage), try readTree(restored)).isEmpty)
        let check = try run(snapBinary, ["--repo", repo, "check", "--read-data"], asUser: "nobody")
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
        let export = try run(snapBinary, ["--repo", repo, "export", id, "-o", folder.path], asUser: "nobody")
        #expect(export.status == 0, "\(export.stderr)")
        try writeFile(storage + "/third.bin", pseudoRandomBytes(5000, seed: 77))
        let again = try run(
            snapBinary, ["--repo", repo, "snapshot", "--no-db", "--storage", storage], asUser: "nobody")
        #expect(again.status == 0, "\(again.stderr)")
        let prune = try run(snapBinary, ["--repo", repo, "prune"], asUser: "nobody")
        #expect(prune.status == 0, "\(prune.stderr)")
    }

    /// `init` by root in an empty folder that belongs to another user makes that user's repository.
    @Test func initByRootInAnotherUsersFolderMakesTheirRepository() throws {
        let folder = try TemporaryDirectory()
        let (repo, _) = try reachableFolder(folder, files: 0)
        try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: false)
        try run("/bin/chown", ["nobody", repo])
        #expect(try snap("--repo", repo, "init").status == 0)
        #expect(try notOwned(by: nobody, under: repo).isEmpty)
        #expect(try run(snapBinary, ["--repo", repo, "check"], asUser: "nobody").status == 0)
    }

    /// Files an older snap left as root (or any file the owner may not read) are a permission
    /// problem: every command says so and how to fix it, and none calls them damaged or missing,
    /// since the documented cure for damage (moving the object out) would throw good data away.
    @Test func permissionErrorsAreReportedAsSuchNeverAsDamage() throws {
        let folder = try TemporaryDirectory()
        let (repo, _, id) = try nobodysRepository(folder)
        let object = ObjectID(hashing: pseudoRandomBytes(3000, seed: 3)).hex
        let objectPath = repo + "/objects/" + object.prefix(2) + "/" + object
        try run("/bin/chown", ["root:root", objectPath])

        func expectPermissionError(_ arguments: [String], _ what: String) throws {
            let result = try run(snapBinary, ["--repo", repo] + arguments, asUser: "nobody")
            let output = result.stdout + result.stderr
            #expect(result.status == 1, "\(what): \(output)")
            #expect(output.contains("permission denied") && output.contains("chown"), "\(what): \(output)")
            #expect(!output.contains("damaged") && !output.contains("is missing"), "\(what): \(output)")
        }
        try expectPermissionError(["check", "--read-data"], "check --read-data")
        try expectPermissionError(["restore", id, "--no-db", "--storage-to", folder.file("restored")], "restore")
        try expectPermissionError(["export", id, "-o", folder.file("out.tar.gz")], "export")
        #expect(try run(snapBinary, ["--repo", repo, "check"], asUser: "nobody").status == 0, "its structure is whole")

        // Object folders of root's: listing, stat and writing fail.
        for name in try FileManager.default.contentsOfDirectory(atPath: repo + "/objects") {
            try run("/bin/chown", ["root:root", repo + "/objects/" + name])
        }
        try expectPermissionError(["check"], "check")
        try expectPermissionError(["prune"], "prune")
        try expectPermissionError(["snapshot", "--no-db", "--storage", folder.file("storage")], "snapshot")
        try expectPermissionError(["restore", id, "--no-db", "--storage-to", folder.file("restored-2")], "restore")
        #expect(!FileManager.default.fileExists(atPath: folder.file("restored-2")))

        // The fix the messages give works.
        try run("/bin/chown", ["-R", "nobody", repo])
        #expect(try run(snapBinary, ["--repo", repo, "check", "--read-data"], asUser: "nobody").status == 0)
    }

    /// A user who is neither the owner nor root may not add to a repository: what it wrote would
    /// be its own, unreadable to the owner. (Here the repository's modes let it in.)
    @Test func anotherUserMayNotWriteIntoTheRepository() throws {
        let folder = try TemporaryDirectory()
        let (repo, storage) = try reachableFolder(folder, files: 1)
        #expect(try snap("--repo", repo, "init").status == 0)
        #expect(try run("/bin/chmod", ["-R", "a+rwX", folder.path]).status == 0)
        let refused = try run(
            snapBinary, ["--repo", repo, "snapshot", "--no-db", "--storage", storage], asUser: "nobody")
        #expect(refused.status == 1)
        #expect(
            refused.stderr.contains("belongs to root") && refused.stderr.contains("sudo -u root"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1)
        #expect(try objectCount(repo) == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
        // Reading is not refused.
        #expect(try run(snapBinary, ["--repo", repo, "list"], asUser: "nobody").status == 0)
    }
}

/// The repository lock holds only if every writer locks the same file.
@Suite(.enabled(if: geteuid() == 0 || TestCluster.isCI, "running snap as another user needs root"))
struct RepositoryLockTests {
    /// A lock file the writer cannot open: before, a snapshot then locked the folder instead and
    /// ran beside a prune holding the real lock. Now writers refuse, saying why and what to do;
    /// readers too, since the filesystem is writable (a prune could run).
    @Test func aWriterThatCannotTakeTheRealLockRefuses() throws {
        let folder = try TemporaryDirectory()
        let (repo, storage) = try reachableFolder(folder, files: 1)
        #expect(try shell("tar -czf backup_20260101_120000.tar.gz storage", in: folder.path).status == 0)
        try run("/bin/chown", ["-R", "nobody", folder.path])
        #expect(try run(snapBinary, ["--repo", repo, "init"], asUser: "nobody").status == 0)
        // The lock file as a run as root left it (before root gave its files to the owner).
        try FileManager.default.removeItem(atPath: repo + "/lock")
        try writeFile(repo + "/lock", [], mode: 0o600)
        // A prune (or forget) holds the real lock meanwhile.
        let holder = try lockHolder(repo + "/lock", shared: false, seconds: 60, readyFile: folder.file("held"))
        defer {
            kill(holder.processIdentifier, SIGKILL)
            holder.waitUntilExit()
        }
        for arguments in [
            ["snapshot", "--no-db", "--storage", storage], ["import", folder.file("backup_20260101_120000.tar.gz")],
            ["check"],
        ] {
            let result = try run(snapBinary, ["--repo", repo] + arguments, asUser: "nobody")
            #expect(result.status == 1, "\(arguments[0]): \(result.stdout) \(result.stderr)")
            #expect(
                result.stderr.contains("cannot lock the repository") && result.stderr.contains("/lock")
                    && result.stderr.contains("chown"), "\(arguments[0]): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        }
        #expect(try objectCount(repo) == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
    }
}

/// Makes `folder` reachable by every user and puts in it a storage folder of `files` small
/// distinct files; returns the path for a repository (not created) and the storage folder's.
private func reachableFolder(_ folder: TemporaryDirectory, files: Int) throws -> (repo: String, storage: String) {
    chmod(folder.path, 0o755)
    let storage = folder.file("storage")
    try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
    for index in 0..<files {
        try writeFile(storage + "/first-\(index).bin", pseudoRandomBytes(3000, seed: UInt64(index)))
    }
    return (folder.file("repo"), storage)
}
