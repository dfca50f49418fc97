import Foundation
import SnapCore
import SnapTestSupport
import Testing

@Suite struct InspectTests {
    @Test func diffNamesAddedRemovedAndChangedFiles() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage + "/docs", withIntermediateDirectories: true)
        try writeFile(storage + "/docs/keep.txt", Array("same".utf8), mtime: 1_000_000_000_000_000_000)
        try writeFile(storage + "/docs/old.txt", Array("going away".utf8))
        try writeFile(storage + "/edited.bin", pseudoRandomBytes(10_000, seed: 1), mtime: 1_000_000_000_000_000_000)
        try snap("--repo", repo, "init")
        let first = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        try FileManager.default.removeItem(atPath: storage + "/docs/old.txt")
        try writeFile(storage + "/docs/new.txt", Array("arrived".utf8))
        try writeFile(storage + "/edited.bin", pseudoRandomBytes(12_000, seed: 2))
        let second = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)

        let text = try snap("--repo", repo, "diff", String(first.prefix(8)), "latest")
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("+ docs/new.txt"))
        #expect(text.stdout.contains("- docs/old.txt"))
        #expect(text.stdout.contains("M edited.bin"))
        #expect(!text.stdout.contains("keep.txt"))

        let json = try parseJSON(try snap("--repo", repo, "diff", first, second, "--json").stdout) as? [String: Any]
        #expect((json?["added"] as? [[String: Any]])?.map { $0["path"] as? String } == ["docs/new.txt"])
        #expect((json?["removed"] as? [[String: Any]])?.map { $0["path"] as? String } == ["docs/old.txt"])
        let changed = (json?["changed"] as? [[String: Any]])?.first { $0["path"] as? String == "edited.bin" }
        #expect(changed?["old_size"] as? Int == 10_000 && changed?["size"] as? Int == 12_000)
        #expect(json?["from"] as? String == first && json?["to"] as? String == second)
    }

    @Test func statsAddsUpAndAttributesUniqueBytes() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/shared.bin", pseudoRandomBytes(200_000, seed: 3))
        try snap("--repo", repo, "init")
        try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)
        try writeFile(storage + "/second-only.bin", pseudoRandomBytes(100_000, seed: 4))
        try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)

        let stats = try snap("--repo", repo, "stats", "--json")
        #expect(stats.status == 0, "\(stats.stderr)")
        let json = try parseJSON(stats.stdout) as? [String: Any]
        #expect(json?["snapshots"] as? Int == 2)
        #expect(json?["objects"] as? Int == (try objectCount(repo)))
        #expect(json?["logical_bytes"] as? Int == 200_000 + 300_000)
        #expect((json?["stored_bytes"] as? Int ?? 0) > 300_000)
        #expect((json?["dedup_ratio"] as? Double ?? 0) > 1.4)
        let per = json?["per_snapshot"] as? [[String: Any]]
        // Random data does not compress: the second snapshot alone holds its new file (and its
        // own manifest), the first only its manifest.
        #expect((per?[1]["unique_stored_bytes"] as? Int ?? 0) > 100_000)
        #expect((per?[0]["unique_stored_bytes"] as? Int ?? Int.max) < 1_000)
        #expect(try snap("--repo", repo, "stats").stdout.contains("dedup ratio"))
    }

    @Test func checkJSONReportsProblems() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/a.bin", pseudoRandomBytes(5_000, seed: 5))
        try snap("--repo", repo, "init")
        try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage)
        let healthy = try parseJSON(try snap("--repo", repo, "check", "--read-data", "--json").stdout) as? [String: Any]
        #expect(healthy?["ok"] as? Bool == true)
        #expect((healthy?["objects_read"] as? Int ?? 0) >= 2)

        let name = ObjectID(hashing: pseudoRandomBytes(5_000, seed: 5)).hex
        try FileManager.default.removeItem(atPath: repo + "/objects/" + name.prefix(2) + "/" + name)
        let result = try snap("--repo", repo, "check", "--json")
        #expect(result.status == 1)
        let broken = try parseJSON(result.stdout) as? [String: Any]
        #expect(broken?["ok"] as? Bool == false)
        #expect((broken?["problems"] as? [String])?.first?.contains(name) == true)
    }
}
