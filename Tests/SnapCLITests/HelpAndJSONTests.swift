import Foundation
import SnapCore
import SnapTestSupport
import Testing

@Suite struct HelpAndJSONTests {
    static let commands = [
        "init", "snapshot", "list", "show", "restore", "check", "export", "import", "forget", "prune", "diff", "stats",
    ]

    @Test func everyCommandIsListedAndItsHelpShowsAnExample() throws {
        let top = try snap("--help")
        #expect(top.status == 0)
        for command in Self.commands {
            #expect(top.stdout.contains("  \(command) "), "snap --help does not list \(command)")
            let help = try snap(command, "--help")
            #expect(help.status == 0)
            #expect(help.stdout.contains("Example"), "snap \(command) --help has no example")
            #expect(help.stdout.contains("snap \(command)") || help.stdout.contains("snap --repo"))
        }
        #expect(try snap("--generate-completion-script", "bash").stdout.contains("snap"))
    }

    @Test func everyJSONOutputHasTheDocumentedFields() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)
        try writeFile(storage + "/a.txt", Array("a".utf8))
        try snap("--repo", repo, "init")
        func json(_ arguments: String...) throws -> Any {
            let result = try snap(["--repo", repo] + arguments)
            #expect(result.status == 0, "\(arguments): \(result.stderr)")
            return try parseJSON(result.stdout)
        }
        let snapshotFields = ["id", "short_id", "time", "host", "tags", "totals", "errors"]
        let totalsFields = [
            "files", "directories", "symlinks", "file_bytes", "database_bytes", "new_objects", "new_bytes",
            "stored_bytes",
        ]
        let first = try json("snapshot", "--no-db", "--storage", storage, "--json") as? [String: Any] ?? [:]
        try writeFile(storage + "/b.txt", Array("b".utf8))
        _ = try json("snapshot", "--no-db", "--storage", storage, "--json")
        for object in [first, try json("show", "latest", "--json") as? [String: Any] ?? [:]] {
            for field in snapshotFields { #expect(object[field] != nil, "snapshot JSON lacks \(field)") }
            for field in totalsFields {
                #expect((object["totals"] as? [String: Any])?[field] != nil, "totals lack \(field)")
            }
            #expect((object["time"] as? String).flatMap { Timestamp(iso8601: $0) } != nil)
        }
        let list = try json("list", "--json") as? [[String: Any]] ?? []
        #expect(list.count == 2 && list.allSatisfy { item in snapshotFields.allSatisfy { item[$0] != nil } })
        let diff = try json("diff", first["id"] as? String ?? "", "latest", "--json") as? [String: Any] ?? [:]
        for field in ["from", "to", "added", "removed", "changed"] {
            #expect(diff[field] != nil, "diff lacks \(field)")
        }
        let stats = try json("stats", "--json") as? [String: Any] ?? [:]
        for field in ["snapshots", "objects", "logical_bytes", "stored_bytes", "dedup_ratio", "per_snapshot"] {
            #expect(stats[field] != nil, "stats lacks \(field)")
        }
        let check = try json("check", "--json") as? [String: Any] ?? [:]
        for field in ["ok", "snapshots", "referenced_objects", "objects_read", "problems", "warnings"] {
            #expect(check[field] != nil, "check lacks \(field)")
        }
        let forget = try json("forget", "--keep-last", "1", "--dry-run", "--json") as? [String: Any] ?? [:]
        let decision = forget["decision"] as? [String: Any]
        #expect(forget["dry_run"] as? Bool == true)
        #expect((decision?["kept"] as? [[String: Any]])?.first?["reasons"] is [Any])
        #expect((decision?["removed"] as? [[String: Any]])?.count == 1)
        let prune = try json("prune", "--json") as? [String: Any] ?? [:]
        for field in ["snapshots", "objects_kept", "objects_deleted", "bytes_freed", "leftovers_deleted"] {
            #expect(prune[field] != nil, "prune lacks \(field)")
        }
    }
}
