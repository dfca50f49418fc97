import Foundation
import SnapCore
import SnapTestSupport
import Testing

@Suite struct ConfigFileTests {
    @Test func flagBeatsEnvironmentBeatsFile() throws {
        let folder = try TemporaryDirectory()
        let fileRepo = folder.file("file-repo")
        let envRepo = folder.file("env-repo")
        let flagRepo = folder.file("flag-repo")
        let storage = folder.file("storage")
        let config = folder.file("config")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/a.txt", Array("a".utf8))
        try writeFile(
            config, Array("# snap configuration\nrepo = \(fileRepo)\nstorage = \"\(storage)\"  # quoted\n".utf8))
        for repo in [fileRepo, envRepo, flagRepo] { try snap("--repo", repo, "init") }
        let fileOnly = ["SNAP_CONFIG": config]

        // A scheduled job can be just `snap snapshot`.
        let plain = try snap("snapshot", "--no-db", environment: fileOnly)
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(try snapshotCount(fileRepo) == 1)

        // The environment beats the file; the flag beats both.
        #expect(
            try snap("snapshot", "--no-db", environment: fileOnly.merging(["SNAP_REPO": envRepo]) { $1 }).status == 0)
        #expect(try snapshotCount(envRepo) == 1)
        #expect(
            try snap(
                "--repo", flagRepo, "snapshot", "--no-db", environment: fileOnly.merging(["SNAP_REPO": envRepo]) { $1 }
            )
            .status == 0)
        #expect(try snapshotCount(flagRepo) == 1 && snapshotCount(envRepo) == 1 && snapshotCount(fileRepo) == 1)
        let otherStorage = folder.file("other")
        try FileManager.default.createDirectory(atPath: otherStorage, withIntermediateDirectories: true)
        let byEnvironment = try snap(
            "snapshot", "--no-db", "--json", environment: fileOnly.merging(["SNAP_STORAGE": otherStorage]) { $1 })
        #expect((try parseJSON(byEnvironment.stdout) as? [String: Any])?["storage"] as? String == otherStorage)

        // A malformed file is one line naming the file and the line.
        try writeFile(config, Array("repo = \(fileRepo)\ncolour = blue\n".utf8))
        let bad = try snap("list", environment: fileOnly)
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("\(config):2") && bad.stderr.split(separator: "\n").count == 1, "\(bad.stderr)")
    }

    private func snapshotCount(_ repo: String) throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").filter { $0.hasSuffix(".json") }.count
    }
}
