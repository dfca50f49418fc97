import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct FilesCacheTests {
    @Test func unchangedFilesAreNotReadAgainAndChangedOnesAre() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        let cache = folder.file("cache")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        let oldTime: Int64 = 1_600_000_000_000_000_000
        try writeFile(storage + "/a.bin", pseudoRandomBytes(300_000, seed: 1), mtime: oldTime)
        try writeFile(storage + "/b.txt", Array("bee".utf8), mtime: oldTime)
        try writeFile(storage + "/c.txt", Array("sea".utf8), mtime: oldTime)
        // Files changed in the last two seconds are not remembered (their clock tick may not be over).
        sleep(3)
        let environment = ["SNAP_CACHE_DIR": cache]
        func take() throws -> [String: Any] {
            let result = try snap(
                "--repo", repo, "snapshot", "--no-db", "--storage", storage, "--json", environment: environment)
            #expect(result.status == 0, "\(result.stderr)")
            return (try parseJSON(result.stdout) as? [String: Any])?["totals"] as? [String: Any] ?? [:]
        }
        try snap("--repo", repo, "init")
        #expect(try take()["files_unchanged"] == nil)
        #expect(try take()["files_unchanged"] as? Int == 3)

        // Edited, same size, old mtime put back: the ctime still tells, and the new bytes are stored.
        try writeFile(storage + "/b.txt", Array("BEE".utf8), mtime: oldTime)
        let third = try take()
        #expect(third["files_unchanged"] as? Int == 2)
        let restored = folder.file("restored")
        #expect(try snap("--repo", repo, "restore", "latest", "--no-db", "--storage-to", restored).status == 0)
        #expect(FileManager.default.contents(atPath: restored + "/b.txt") == Data("BEE".utf8))
        #expect(differences(try readTree(storage), try readTree(restored)).isEmpty)

        // Without the cache everything is read again; the result is the same.
        try FileManager.default.removeItem(atPath: cache)
        #expect(try take()["files_unchanged"] == nil)
        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
    }
}
