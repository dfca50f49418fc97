import ArgumentParser
import Foundation
import SnapCore

struct PruneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete objects that no snapshot references, and leftovers of interrupted runs.",
        discussion: """
            Takes the repository's exclusive lock: it never runs beside a snapshot, restore, export,
            import or check. When the repository is busy it fails at once (exit 4), or waits up to
            --wait seconds. It refuses to delete anything while a snapshot record or manifest cannot
            be read, since that snapshot's objects cannot be told apart from garbage.

            Examples:
              snap prune
              snap prune --wait 600 --json
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(
        name: .long, help: ArgumentHelp("Wait up to this many seconds for the repository lock.", valueName: "seconds"))
    var wait: Double = 0

    @Flag(name: .customLong("dry-run"), help: "Report what would be deleted; delete nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .exclusive, timeout: wait)
        let report = try Pruner(repository: repository, lock: lock).run(dryRun: dryRun)
        if json {
            try printJSON(report)
            return
        }
        let verb = dryRun ? "would delete" : "deleted"
        print(
            "\(verb) \(report.objectsDeleted) unreferenced object(s), \(formatBytes(report.bytesFreed)) freed; \(report.leftoversDeleted) leftover temporary file(s); \(report.objectsKept) object(s) kept for \(report.snapshots) snapshot(s)"
        )
    }
}

struct ForgetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget",
        abstract: "Remove snapshots by a retention policy (restic's --keep-* rules, in UTC).",
        discussion: """
            Each --keep-* option keeps the newest snapshot of each of the N newest hours, days, ISO
            weeks, months or years that have snapshots (-1: all of them); --keep-last keeps the N
            newest. A snapshot any rule keeps stays. The rules apply to each group of snapshots of the
            same thing on its own (same host, database and storage folder, as restic groups by host
            and paths), so files-only snapshots never use up a day a database snapshot needed. The
            newest snapshot of a group is never removed, and without a --keep-* option nothing is.
            With --tag only snapshots carrying that tag are considered. Forget deletes records only;
            --prune (or a later `snap prune`) frees their objects.

            Example: with a snapshot every 15 minutes,
              snap forget --keep-last 8 --keep-hourly 48 --keep-daily 14 --keep-weekly 8 --keep-monthly 12 --prune
            keeps the last two hours whole, then one snapshot an hour for two days, one a day for two
            weeks, one a week for two months and one a month for a year.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .customLong("keep-last"), help: "Keep the N newest snapshots.")
    var keepLast: Int?
    @Option(name: .customLong("keep-hourly"), help: "Keep the newest snapshot of each of the N newest hours.")
    var keepHourly: Int?
    @Option(name: .customLong("keep-daily"), help: "Keep the newest snapshot of each of the N newest days.")
    var keepDaily: Int?
    @Option(name: .customLong("keep-weekly"), help: "Keep the newest snapshot of each of the N newest weeks.")
    var keepWeekly: Int?
    @Option(name: .customLong("keep-monthly"), help: "Keep the newest snapshot of each of the N newest months.")
    var keepMonthly: Int?
    @Option(name: .customLong("keep-yearly"), help: "Keep the newest snapshot of each of the N newest years.")
    var keepYearly: Int?

    @Option(name: .long, help: "Consider only snapshots with this tag.")
    var tag: String?

    @Flag(name: .customLong("dry-run"), help: "Show what would be removed; remove nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Prune afterwards: delete the objects no snapshot needs any more.")
    var prune = false

    @Option(
        name: .long, help: ArgumentHelp("Wait up to this many seconds for the repository lock.", valueName: "seconds"))
    var wait: Double = 0

    @Flag(name: .long, help: "Print the decision (and the prune report) as JSON.")
    var json = false

    private var policy: RetentionPolicy {
        RetentionPolicy(
            last: keepLast, hourly: keepHourly, daily: keepDaily, weekly: keepWeekly, monthly: keepMonthly,
            yearly: keepYearly, tag: tag)
    }

    func validate() throws {
        do { try policy.validate() } catch { throw ValidationError("\(error)") }
        if policy.isEmpty {
            throw ValidationError(
                "no --keep-* option given: forget removes nothing without a policy; pass e.g. --keep-daily 7")
        }
    }

    private struct Output: Encodable {
        var decision: RetentionDecision
        var dryRun: Bool
        var prune: Pruner.Report?

        enum CodingKeys: String, CodingKey {
            case decision
            case dryRun = "dry_run"
            case prune
        }
    }

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .exclusive, timeout: wait)
        let (snapshots, problems) = try repository.snapshots()
        for problem in problems { StandardError.write("snap: warning: \(problem)\n") }
        let decision = policy.apply(to: snapshots)
        let removed = decision.removed.map(\.id)
        var report: Pruner.Report?
        if prune {
            // The pruner forgets them itself, after checking it can read every other snapshot.
            report = try Pruner(repository: repository, lock: lock).run(dryRun: dryRun, forgetting: removed)
        } else if !dryRun {
            try repository.forget(removed)
        }
        if json {
            try printJSON(Output(decision: decision, dryRun: dryRun, prune: report))
            return
        }
        // One block per group (host, database, storage folder) when there are several.
        let groups = Dictionary(grouping: decision.items, by: \.group).sorted { $0.key < $1.key }
        for (group, items) in groups {
            if groups.count > 1 { print("\(group):") }
            for item in items {
                let action = item.action == .keep ? "keep  " : (dryRun ? "would remove" : "remove")
                let reasons = item.reasons.isEmpty ? "" : "  (\(item.reasons.joined(separator: ", ")))"
                print(
                    "\(groups.count > 1 ? "  " : "")\(action)  \(item.id.prefix(8))  \(item.time.iso8601Seconds)\(reasons)"
                )
            }
        }
        print("\(policy): \(decision.kept.count) kept, \(decision.removed.count) \(dryRun ? "would be " : "")removed")
        if let report {
            print(
                "\(dryRun ? "would delete" : "deleted") \(report.objectsDeleted) unreferenced object(s), \(formatBytes(report.bytesFreed)) freed"
            )
        }
    }
}
