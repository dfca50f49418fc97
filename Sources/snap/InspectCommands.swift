import ArgumentParser
import Foundation
import SnapCore

struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "What changed between two snapshots.",
        discussion: """
            Lists storage entries added (+), removed (-) and changed (M) from the first snapshot to
            the second, with sizes, and for the database the dump's size change and how many bytes
            of the second dump are in chunks the first does not have.

            Example:
              snap diff 3fa9 latest
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The older snapshot (id, prefix or `latest`).")
    var first: String

    @Argument(help: "The newer snapshot (id, prefix or `latest`).")
    var second: String

    @Flag(name: .long, help: "Print the differences as JSON.")
    var json = false

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .shared)
        defer { withExtendedLifetime(lock) {} }
        let diff = try SnapshotDiff(
            repository: repository, from: try repository.resolve(first), to: try repository.resolve(second))
        if json {
            try printJSON(diff)
            return
        }
        for entry in diff.added {
            print("+ \(entry.path)\(entry.type == "file" ? "  \(formatBytes(entry.size))" : "")")
        }
        for entry in diff.removed {
            print("- \(entry.path)\(entry.type == "file" ? "  \(formatBytes(entry.size))" : "")")
        }
        for entry in diff.changed {
            print(
                "M \(entry.path)\(entry.type == "file" ? "  \(formatBytes(entry.oldSize ?? 0)) -> \(formatBytes(entry.size))" : "")"
            )
        }
        if let database = diff.database {
            let sizes =
                "\(database.oldSize.map(formatBytes) ?? "none") -> \(database.newSize.map(formatBytes) ?? "none")"
            print("database dump: \(sizes), \(formatBytes(database.changedBytes)) in changed chunks")
        }
        print("\(diff.added.count) added, \(diff.removed.count) removed, \(diff.changed.count) changed")
    }
}

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Repository totals: logical bytes, stored bytes, dedup ratio, objects, snapshots.",
        discussion: """
            Logical bytes are what the snapshots hold, summed over snapshots; stored bytes are what
            the object files take. Per snapshot, "alone" is what only that snapshot references: what
            forgetting it (and pruning) would free.

            Example:
              snap stats --json
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .long, help: "Print the totals as JSON.")
    var json = false

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .shared)
        defer { withExtendedLifetime(lock) {} }
        let statistics = try RepositoryStatistics(repository: repository)
        if json {
            try printJSON(statistics)
            return
        }
        var rows = [["ID", "TIME (UTC)", "LOGICAL", "ALONE"]]
        for snapshot in statistics.perSnapshot {
            rows.append([
                String(snapshot.id.prefix(8)), snapshot.time, formatBytes(snapshot.logicalBytes),
                formatBytes(snapshot.uniqueStoredBytes),
            ])
        }
        print(table(rows))
        print(
            "\(statistics.snapshots) snapshot(s), \(statistics.objects) object(s): \(formatBytes(statistics.logicalBytes)) logical, \(formatBytes(statistics.storedBytes)) stored, dedup ratio \(String(format: "%.1f", statistics.dedupRatio))x"
        )
    }
}
