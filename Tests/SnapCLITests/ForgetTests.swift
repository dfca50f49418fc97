import Foundation
import SnapCore
import SnapTestSupport
import Testing

@Suite struct ForgetTests {
    /// Snapshots dated one per day at noon UTC, each with its own file (so each has objects of its own).
    private func makeDailySnapshots(_ repo: String, days: Int) throws -> [Snapshot] {
        let repository = try Repository.initialize(at: repo)
        let base: Int64 = 1_767_182_400  // 2025-12-31T12:00:00Z
        return try (0..<days).map { day in
            let writer = try SnapshotWriter(repository: repository)
            try writer.append(ManifestEntry(kind: .directory, path: ".", mode: 0o755, mtime: 0))
            let stream = try writer.storeStream(
                .files, read: memorySource(pseudoRandomBytes(50_000, seed: UInt64(day))))
            try writer.append(
                ManifestEntry(
                    kind: .file, path: "day.bin", mode: 0o644, mtime: 0, size: stream.size, chunks: stream.chunks))
            return try writer.commit(
                time: Timestamp(seconds: base + Int64(day) * 86_400), host: "h", tags: day % 2 == 0 ? ["even"] : [],
                program: "test", sources: .init(storage: "/s"), errors: [])
        }
    }

    @Test func forgetKeepsByPolicyAndPruneFreesTheRest() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let snapshots = try makeDailySnapshots(repo, days: 10)
        let objectsBefore = try objectCount(repo)

        let refused = try snap("--repo", repo, "forget")
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("--keep"))

        let dryRun = try snap("--repo", repo, "forget", "--keep-daily", "3", "--dry-run", "--json")
        #expect(dryRun.status == 0, "\(dryRun.stderr)")
        let decision = (try parseJSON(dryRun.stdout) as? [String: Any])?["decision"] as? [String: Any]
        let kept = (decision?["kept"] as? [[String: Any]])?.compactMap { $0["id"] as? String } ?? []
        let removed = (decision?["removed"] as? [[String: Any]])?.compactMap { $0["id"] as? String } ?? []
        #expect(Set(kept) == Set(snapshots.suffix(3).map(\.id)))
        #expect(Set(removed) == Set(snapshots.prefix(7).map(\.id)))
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").count == 10)

        let forget = try snap("--repo", repo, "forget", "--keep-daily", "3", "--prune")
        #expect(forget.status == 0, "\(forget.stderr)")
        #expect(forget.stdout.contains("daily 2026-01-09"))
        let listed = (try parseJSON(try snap("--repo", repo, "list", "--json").stdout) as? [[String: Any]])?
            .compactMap { $0["id"] as? String }
        #expect(listed == snapshots.suffix(3).map(\.id))
        #expect(try objectCount(repo) < objectsBefore)
        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
        for snapshot in snapshots.suffix(3) {
            let target = folder.file("restored-\(snapshot.shortID)")
            #expect(try snap("--repo", repo, "restore", snapshot.id, "--no-db", "--storage-to", target).status == 0)
            #expect(FileManager.default.contents(atPath: target + "/day.bin")?.count == 50_000)
        }
    }

    /// forget --prune that cannot read every remaining snapshot forgets nothing at all; its dry
    /// run counts the objects the forgotten snapshots alone held.
    @Test func forgetWithPruneChangesNothingWhenItMustRefuse() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let snapshots = try makeDailySnapshots(repo, days: 4)
        let objects = try objectCount(repo)

        let dryRun = try snap("--repo", repo, "forget", "--keep-last", "1", "--prune", "--dry-run", "--json")
        #expect(dryRun.status == 0, "\(dryRun.stderr)")
        let report = (try parseJSON(dryRun.stdout) as? [String: Any])?["prune"] as? [String: Any]
        #expect((report?["objects_deleted"] as? Int ?? 0) >= 3)
        #expect(try objectCount(repo) == objects)

        try writeFile(repo + "/snapshots/" + snapshots[3].id + ".json", Array("{ truncated".utf8))
        let forget = try snap("--repo", repo, "forget", "--keep-last", "1", "--prune")
        #expect(forget.status == 1)
        #expect(forget.stderr.contains("refusing to prune") && forget.stderr.contains("nothing was forgotten"))
        #expect(forget.stderr.split(separator: "\n").filter { !$0.contains("warning") }.count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").count == 4)
        #expect(try objectCount(repo) == objects)
    }

    @Test func tagFilterOnlyTouchesTaggedSnapshots() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let snapshots = try makeDailySnapshots(repo, days: 6)
        let result = try snap("--repo", repo, "forget", "--keep-last", "1", "--tag", "even")
        #expect(result.status == 0, "\(result.stderr)")
        let listed = Set(
            (try parseJSON(try snap("--repo", repo, "list", "--json").stdout) as? [[String: Any]])?
                .compactMap { $0["id"] as? String } ?? [])
        // Even days 0, 2, 4 are tagged: only day 4 of them stays; untagged days 1, 3, 5 stay.
        #expect(listed == Set([1, 3, 4, 5].map { snapshots[$0].id }))
    }
}
