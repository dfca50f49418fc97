import ArgumentParser
import Foundation
import SnapCore

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
    var compressionLevel: Int = 3

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
        let repository = try Repository.initialize(at: global.repositoryPath, config: try configuration())
        print("created snap repository \(repository.config.id) at \(repository.path)")
    }
}

struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Dump the database and read the storage folder into a new snapshot.",
        discussion: """
            Prints the new snapshot's id. Files that cannot be read are named on stderr and listed
            in the snapshot; the command then exits 3.

            Example:
              snap snapshot --no-db --storage /srv/app/storage --tag hourly
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(name: .long, help: ArgumentHelp("libpq connection string or URI.", valueName: "conninfo"))
    var db: String?

    @Flag(name: .customLong("no-db"), help: "Files only: do not dump a database.")
    var noDB = false

    @Option(name: .long, help: ArgumentHelp("The storage folder (default: $SNAP_STORAGE).", valueName: "dir"))
    var storage: String?

    @Option(name: .long, help: ArgumentHelp("A tag for the snapshot; repeat for more.", valueName: "tag"))
    var tag: [String] = []

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        if noDB && db != nil { throw ValidationError("--db and --no-db exclude each other") }
        for tag in tag where tag.isEmpty || tag.contains(",") || tag.contains(where: \.isNewline) {
            throw ValidationError("tag '\(tag)' is not valid: tags are non-empty and hold no commas or newlines")
        }
    }

    func run() throws {
        let repository = try global.openRepository()
        let storagePath =
            storage ?? ProcessInfo.processInfo.environment["SNAP_STORAGE"].flatMap { $0.isEmpty ? nil : $0 }
        guard noDB else {
            throw CommandFailure(
                message: "database snapshots are not available in this build yet; pass --no-db",
                status: ExitStatus.usage)
        }
        guard storagePath != nil else {
            throw CommandFailure(
                message: "nothing to snapshot: pass --storage DIR (or set SNAP_STORAGE)", status: ExitStatus.usage)
        }
        let builder = SnapshotBuilder(
            repository: repository,
            options: SnapshotOptions(storage: storagePath, tags: tag, program: "snap \(Snap.version)"))
        builder.onWarning = { StandardError.write("snap: warning: \($0)\n") }
        let snapshot = try builder.run()
        if json {
            try printJSON(SnapshotSummary(snapshot))
        } else {
            print(snapshot.id)
        }
        if !snapshot.record.errors.isEmpty {
            StandardError.write(
                "snap: snapshot \(snapshot.shortID) was recorded, but \(snapshot.record.errors.count) item(s) could not be read (see `snap show \(snapshot.shortID)`)\n"
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
        var rows = [["ID", "TIME (UTC)", "HOST", "TAGS", "FILES", "SIZE"]]
        for snapshot in snapshots {
            let record = snapshot.record
            rows.append([
                snapshot.shortID, record.time.iso8601Seconds, record.host, record.tags.joined(separator: ","),
                String(record.totals.files), formatBytes(record.totals.fileBytes + record.totals.databaseBytes),
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
            "time      \(record.time.iso8601Seconds)",
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
            lines.append("          system id \(database.systemIdentifier), \(database.pgDumpVersion)")
        }
        lines.append(
            "added     \(totals.newObjects) new objects, \(formatBytes(totals.newBytes)) new data, \(formatBytes(totals.storedBytes)) stored"
        )
        if record.errors.isEmpty {
            lines.append("errors    none")
        } else {
            lines.append("errors    \(record.errors.count):")
            lines += record.errors.map { "  \($0)" }
        }
        print(lines.joined(separator: "\n"))
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Bring back a snapshot exactly.",
        discussion: """
            The target folder must be missing or empty unless --clean is given; with --clean it ends
            up exactly as in the snapshot (files the snapshot does not have are removed).

            Example:
              snap restore latest --no-db --storage-to /srv/app/storage-restored
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Snapshot id, prefix or `latest`.")
    var id: String

    @Option(name: .long, help: ArgumentHelp("Target database (libpq connection string or URI).", valueName: "conninfo"))
    var db: String?

    @Option(
        name: .customLong("storage-to"),
        help: ArgumentHelp("Folder to restore the storage tree into.", valueName: "dir"))
    var storageTo: String?

    @Flag(name: .long, help: "Make the targets mirror the snapshot, removing what it does not have.")
    var clean = false

    @Option(name: .long, help: "Parallel pg_restore jobs.")
    var jobs: Int = 1

    @Flag(name: .customLong("no-db"), help: "Do not restore the database.")
    var noDB = false

    @Flag(name: .customLong("no-storage"), help: "Do not restore the storage folder.")
    var noStorage = false

    func validate() throws {
        if jobs < 1 { throw ValidationError("--jobs must be at least 1") }
        if noStorage && storageTo != nil { throw ValidationError("--storage-to and --no-storage exclude each other") }
    }

    func run() throws {
        let repository = try global.openRepository()
        let snapshot = try repository.resolve(id)
        let wantsDatabase = !noDB && snapshot.record.sources.database != nil
        if wantsDatabase {
            throw CommandFailure(
                message: "database restore is not available in this build yet; pass --no-db", status: ExitStatus.usage)
        }
        guard !noStorage else {
            throw CommandFailure(
                message: "nothing to restore: both --no-db and --no-storage were given", status: ExitStatus.usage)
        }
        guard Restorer.hasStorage(snapshot) else {
            throw CommandFailure(
                message: "snapshot \(snapshot.shortID) has no storage folder to restore", status: ExitStatus.failure)
        }
        guard let storageTo else {
            throw CommandFailure(
                message: "pass --storage-to DIR to say where the storage folder goes", status: ExitStatus.usage)
        }
        let statistics = try Restorer(repository: repository, snapshot: snapshot, target: storageTo, clean: clean).run()
        var summary =
            "restored snapshot \(snapshot.shortID) into \(storageTo): \(statistics.files) files (\(formatBytes(statistics.bytes))), \(statistics.directories) folders, \(statistics.symlinks) symlinks"
        if clean { summary += "; removed \(statistics.removed) entries the snapshot does not have" }
        print(summary)
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

    @Option(
        name: .customLong("read-data-subset"),
        help: ArgumentHelp("Read and verify a random PERCENT of the objects.", valueName: "percent"))
    var readDataSubset: String?

    func validate() throws {
        if let readDataSubset, parsedPercent(readDataSubset) == nil {
            throw ValidationError("--read-data-subset takes a percentage from 0 to 100, like 10 or 2.5%")
        }
    }

    private func parsedPercent(_ text: String) -> Double? {
        let number = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let value = Double(number), value > 0, value <= 100 else { return nil }
        return value
    }

    func run() throws {
        let repository = try global.openRepository()
        let percent: Double? = readData ? 100 : readDataSubset.flatMap(parsedPercent)
        let report = try Checker(repository: repository).run(readDataPercent: percent)
        var summary = "checked \(report.snapshots) snapshot(s), \(report.referencedObjects) referenced object(s)"
        if percent != nil { summary += ", read \(report.objectsChecked) object(s)" }
        print(summary)
        if report.isHealthy {
            print("no problems found")
            return
        }
        for problem in report.problems { print("error: \(problem)") }
        throw CommandFailure(
            message: "the repository has \(report.problems.count) problem(s), listed above", status: ExitStatus.failure)
    }
}
