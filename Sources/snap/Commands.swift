import ArgumentParser
import Foundation
import SnapCore
import SnapPostgres

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create an empty repository.",
        discussion: """
            Fails if a repository exists there already, or if the folder is not empty.

            Example:
              snap --repo /backups init
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .customLong("compression-level"), help: "zstd level for every object, 1 to 19.")
    var compressionLevel: Int = RepositoryConfig.defaultCompressionLevel

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Chunk sizes for one stream kind (files, database or tree), e.g. database=16K,64K,256K; repeatable.",
            valueName: "kind=min,avg,max"))
    var chunker: [String] = []

    func validate() throws {
        guard (1...19).contains(compressionLevel) else {
            throw ValidationError("--compression-level must be from 1 to 19")
        }
        _ = try configuration()
    }

    /// The default configuration with the user's overrides applied.
    private func configuration() throws -> RepositoryConfig {
        var config = RepositoryConfig.makeDefault(compressionLevel: compressionLevel)
        for setting in chunker {
            let parts = setting.split(separator: "=", maxSplits: 1).map(String.init)
            let sizes = parts.count == 2 ? parts[1].split(separator: ",").compactMap { parseSize(String($0)) } : []
            guard parts.count == 2, sizes.count == 3 else {
                throw ValidationError("--chunker \(setting): write it as KIND=MIN,AVG,MAX, e.g. database=16K,64K,256K")
            }
            let parameters = ChunkerParameters(minSize: sizes[0], averageSize: sizes[1], maxSize: sizes[2])
            do { try parameters.validate() } catch { throw ValidationError("--chunker \(setting): \(error)") }
            switch parts[0] {
            case "files": config.chunker.files = parameters
            case "database": config.chunker.database = parameters
            case "tree": config.chunker.tree = parameters
            default: throw ValidationError("--chunker \(setting): the kind is files, database or tree")
            }
        }
        return config
    }

    func run() throws {
        let repository = try Repository.initialize(at: try global.repositoryPath, config: try configuration())
        print("created snap repository \(repository.config.id) at \(repository.path)")
    }
}

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Dump the database and read the storage folder into a new snapshot.",
        discussion: """
            Dumps the database with pg_dump (custom format, uncompressed, in one REPEATABLE READ
            snapshot) and reads the storage folder alongside, once the dump's snapshot is taken (so
            every file a dumped row points to is there), and prints the new snapshot's id. Without
            --db, the config file's db and libpq's environment (PGHOST, PGPORT, PGUSER, PGDATABASE,
            PGSERVICE, PGPASSFILE...) decide, as with psql; a database must be named in one of them.
            A failed dump records nothing. Files that cannot be read are named on stderr and listed
            in the snapshot; the command then exits 3.

            Examples:
              snap snapshot --db "host=/run/postgresql dbname=app" --storage /srv/app/storage --tag hourly
              snap snapshot --db postgresql://backup@db.internal/app --storage /srv/app/storage
              snap snapshot --no-db --storage /srv/app/storage
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: ArgumentHelp("libpq connection string or URI.", valueName: "conninfo"))
    var db: String?

    @Flag(name: .customLong("no-db"), help: "Files only: do not dump a database.")
    var noDB = false

    @Flag(
        name: .customLong("force-dump"),
        help: "Run pg_dump even when the database provably has not changed since its last snapshot.")
    var forceDump = false

    @Option(name: .long, help: ArgumentHelp("The storage folder (default: $SNAP_STORAGE).", valueName: "dir"))
    var storage: String?

    @Option(name: .long, help: ArgumentHelp("A tag for the snapshot; repeat for more.", valueName: "tag"))
    var tag: [String] = []

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    @Flag(name: .shortAndLong, help: "No progress line and no summary on stderr; only the result.")
    var quiet = false

    func validate() throws {
        if noDB && db != nil { throw ValidationError("--db and --no-db exclude each other") }
        for tag in tag where tag.isEmpty || tag.contains(",") || tag.contains(where: \.isNewline) {
            throw ValidationError("tag '\(tag)' is not valid: tags are non-empty and hold no commas or newlines")
        }
    }

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .adding)
        defer { withExtendedLifetime(lock) {} }
        let file = try ConfigFile.load()
        let storagePath =
            storage ?? ProcessInfo.processInfo.environment["SNAP_STORAGE"].flatMap { $0.isEmpty ? nil : $0 }
            ?? file.values["storage"]
        guard !noDB || storagePath != nil else {
            throw CommandFailure(
                message: "nothing to snapshot: --no-db needs --storage DIR (or SNAP_STORAGE)", status: ExitStatus.usage)
        }
        // Check the folder before connecting, so that bad input never starts a dump.
        if let storagePath { _ = try SnapshotBuilder.validateStorage(storagePath, repository: repository) }
        var options = SnapshotOptions(storage: storagePath, tags: tag, program: "snap \(Snap.version)")
        options.forceDump = forceDump
        let builder = SnapshotBuilder(repository: repository, options: options)
        let progress = ProgressLine(quiet: quiet)
        builder.onWarning = {
            progress.finish()
            StandardError.write("snap: warning: \($0)\n")
        }
        builder.onProgress = progress.update
        let started = Date()
        let conninfo = file.database(flag: db)
        if !noDB { try requireNamedDatabase(conninfo) }
        let dump = noDB ? nil : try DumpSession(conninfo: conninfo, options: DumpOptions(applicationName: "snap"))
        let snapshot: Snapshot
        do {
            snapshot = try builder.run(dump: dump)
        } catch {
            progress.finish()
            throw error
        }
        progress.finish()
        if !quiet {
            let totals = snapshot.record.totals
            var read = formatBytes(totals.databaseBytes + totals.fileBytes)
            if totals.databaseBytes > 0 && totals.files > 0 {
                read +=
                    " (database \(formatBytes(totals.databaseBytes)), \(totals.files) files \(formatBytes(totals.fileBytes)))"
            }
            let reused = snapshot.record.sources.databaseReusedFrom.map { ", dump reused from \($0.prefix(8))" } ?? ""
            // Which database was dumped, and where: the one line that shows a wrong target.
            let source =
                snapshot.record.sources.database.map {
                    " of database \"\($0.name)\" at \(PostgresConnection.location(host: $0.host ?? "", port: $0.port ?? ""))"
                } ?? ""
            StandardError.write(
                String(
                    format: "snap: snapshot %@%@: %@, %@ new, %@ stored%@, in %.1f s\n", snapshot.shortID, source, read,
                    formatBytes(totals.newBytes), formatBytes(totals.storedBytes), reused,
                    Date().timeIntervalSince(started)))
        }
        if json {
            try printJSON(SnapshotSummary(snapshot))
        } else {
            print(snapshot.id)
        }
        if !snapshot.record.errors.isEmpty {
            StandardError.write(
                "snap: snapshot \(snapshot.shortID) was recorded with \(builder.problemCount) problem(s), named above (see `snap show \(snapshot.shortID)`)\n"
            )
            throw ExitCode(ExitStatus.partialSnapshot)
        }
    }
}

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List every snapshot, oldest first.",
        discussion: """
            Example:
              snap list
              snap list --json | jq -r '.[-1].id'
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .long, help: "Print an array of JSON objects.")
    var json = false

    func run() throws {
        let repository = try global.openRepository()
        let (snapshots, problems) = try repository.snapshots()
        for problem in problems { StandardError.write("snap: warning: \(problem)\n") }
        if json {
            try printJSON(snapshots.map(SnapshotSummary.init))
            return
        }
        var rows = [["ID", "TIME", "HOST", "TAGS", "DATABASE", "FILES", "STORAGE", "ADDED"]]
        for snapshot in snapshots {
            let record = snapshot.record
            let totals = record.totals
            let database = record.sources.database == nil ? "-" : formatBytes(totals.databaseBytes)
            let storage = record.sources.storage == nil ? "-" : formatBytes(totals.fileBytes)
            rows.append([
                snapshot.shortID, localTime(record.time), record.host, record.tags.joined(separator: ","), database,
                record.sources.storage == nil ? "-" : String(totals.files), storage, formatBytes(totals.storedBytes),
            ])
        }
        print(table(rows))
        print("\(snapshots.count) snapshot(s)")
    }
}

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one snapshot: time, tags, database facts, file counts, sizes, errors.",
        discussion: """
            ID is a full id, a unique prefix of at least 4 hex digits, or `latest`.

            Example:
              snap show latest
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Snapshot id, prefix or `latest`.")
    var id: String

    @Flag(name: .long, help: "Print a JSON object.")
    var json = false

    func run() throws {
        let repository = try global.openRepository()
        let snapshot = try repository.resolve(id)
        if json {
            try printJSON(SnapshotSummary(snapshot))
            return
        }
        let record = snapshot.record
        let totals = record.totals
        var lines = [
            "snapshot \(snapshot.id)",
            "time      \(record.time.iso8601Seconds) (\(localTime(record.time)) local)",
            "host      \(record.host)",
            "tags      \(record.tags.isEmpty ? "-" : record.tags.joined(separator: ", "))",
            "program   \(record.program)",
        ]
        if let storage = record.sources.storage {
            lines.append(
                "storage   \(storage): \(totals.files) files, \(totals.directories) folders, \(totals.symlinks) symlinks, \(formatBytes(totals.fileBytes))"
            )
        }
        if let database = record.sources.database {
            lines.append(
                "database  \(database.name): \(formatBytes(totals.databaseBytes)) dump, server \(database.serverVersion)"
            )
            lines.append(
                "          size \(formatBytes(UInt64(max(0, database.sizeBytes)))), encoding \(database.encoding), WAL \(database.walPosition)\(database.inRecovery ? " (standby)" : "")"
            )
            lines.append(
                "          system id \(database.systemIdentifier), dumped by pg_dump \(database.pgDumpVersion)")
            if let parent = record.sources.databaseReusedFrom {
                lines.append(
                    "          dump reused from snapshot \(parent.prefix(8)): same WAL position and sequences, no unlogged tables"
                )
            }
            if let data = database.tableData, data.totalBytes > 0 {
                // Rounded up, so that "75%" never shows for a share just above the 3/4 rule.
                let share = Int((Double(data.largestBytes) / Double(data.totalBytes) * 100).rounded(.up))
                lines.append(
                    "          data in \(data.entries) block(s), the largest \(share)%: a restore runs \(data.worthParallelRestore ? "parallel jobs" : "one job") by default"
                )
            }
        }
        lines.append(
            "added     \(totals.newObjects) new objects, \(formatBytes(totals.newBytes)) new data, \(formatBytes(totals.storedBytes)) stored"
        )
        let logical = totals.databaseBytes + totals.fileBytes
        if logical > 0 {
            let share = Double(totals.newBytes) / Double(logical) * 100
            var dedup = String(
                format: "dedup     %.1f%% of the %@ this snapshot holds was new", share, formatBytes(logical))
            if let unchanged = totals.filesUnchanged { dedup += "; \(unchanged) files unchanged (not read)" }
            lines.append(dedup)
        }
        if record.errors.isEmpty {
            lines.append("errors    none")
        } else {
            lines.append("errors    \(record.errors.count):")
            lines += record.errors.map { "  \($0)" }
        }
        print(lines.joined(separator: "\n"))
    }
}

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Verify the repository.",
        discussion: """
            Checks that every snapshot record parses and every object a snapshot needs exists. With
            --read-data it also decompresses and re-hashes every object; --read-data-subset reads a
            random share of them. Exits 1 when anything is wrong.

            Example:
              snap check --read-data
            """
    )

    @OptionGroup var global: GlobalOptions

    @Flag(name: .customLong("read-data"), help: "Read and verify every object.")
    var readData = false

    @Flag(name: .long, help: "Print the report as JSON.")
    var json = false

    @Option(
        name: .customLong("read-data-subset"),
        help: ArgumentHelp("Read and verify a random PERCENT of the objects.", valueName: "percent"))
    var readDataSubset: String?

    func validate() throws {
        if let readDataSubset, parsedPercent(readDataSubset) == nil {
            throw ValidationError("--read-data-subset takes a percentage above 0 and at most 100, like 10 or 2.5%")
        }
    }

    private func parsedPercent(_ text: String) -> Double? {
        let number = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let value = Double(number), value > 0, value <= 100 else { return nil }
        return value
    }

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .shared)
        defer { withExtendedLifetime(lock) {} }
        let percent: Double? = readData ? 100 : readDataSubset.flatMap(parsedPercent)
        let report = try Checker(repository: repository).run(readDataPercent: percent)
        if json {
            try printJSON(CheckOutput(report: report, readData: percent != nil))
            if !report.isHealthy { throw ExitCode(ExitStatus.failure) }
            return
        }
        var summary = "checked \(report.snapshots) snapshot(s), \(report.referencedObjects) referenced object(s)"
        if percent != nil { summary += ", read \(report.objectsChecked) object(s)" }
        print(summary)
        for warning in report.warnings { StandardError.write("snap: warning: \(warning)\n") }
        if report.isHealthy {
            print("no problems found")
            return
        }
        for problem in report.problems { print("error: \(problem)") }
        throw CommandFailure(
            message: "the repository has \(report.problems.count) problem(s), listed above", status: ExitStatus.failure)
    }
}

/// `snap check --json`.
private struct CheckOutput: Encodable {
    var report: Checker.Report
    var readData: Bool

    enum CodingKeys: String, CodingKey {
        case ok, snapshots, problems, warnings
        case referencedObjects = "referenced_objects"
        case objectsRead = "objects_read"
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(report.isHealthy, forKey: .ok)
        try container.encode(report.snapshots, forKey: .snapshots)
        try container.encode(report.referencedObjects, forKey: .referencedObjects)
        try container.encode(readData ? report.objectsChecked : 0, forKey: .objectsRead)
        try container.encode(report.problems, forKey: .problems)
        try container.encode(report.warnings, forKey: .warnings)
    }
}
