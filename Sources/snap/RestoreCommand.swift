import ArgumentParser
import Foundation
import SnapCore
import SnapPostgres

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Bring back a snapshot exactly.",
        discussion: """
            The database streams from the repository into pg_restore --exit-on-error. With --jobs \
            above 1 (the default when the dump's data is spread over several tables) it is first \
            written to a temporary file in $TMPDIR, since a parallel restore needs a seekable file; \
            when that folder lacks the room, the restore streams with one job and says so. Then \
            snap applies the database-level settings the dump holds (ALTER DATABASE ... SET, its \
            comment and grants), runs ANALYZE and prints what it restored. Without --db, libpq's \
            environment names the target database, as with psql. The storage folder is restored at \
            the same time.

            Targets must be empty (a database with no user objects; a missing or empty folder) \
            unless --clean is given. With --clean the snapshot is loaded into a new database beside \
            the target, which replaces it only once it is complete (sessions on the target are \
            ended then, and named); a failure leaves the target as it was. The folder is made to \
            mirror the snapshot: nothing newer survives. --dry-run says what would happen and \
            changes nothing.

            Examples:
              snap restore latest --db "dbname=app_restored" --storage-to /srv/app/storage-restored
              snap restore 3fa9 --db "dbname=app" --storage-to /srv/app/storage --clean --jobs 4
              snap restore latest --db "dbname=app" --no-storage --clean --dry-run
              snap restore latest --no-db --storage-to /tmp/storage
              snap restore latest --db "dbname=app_copy" --no-storage --no-owner
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

    @Flag(name: .long, help: "Make the targets mirror the snapshot, replacing what they hold.")
    var clean = false

    @Flag(name: .customLong("dry-run"), help: "Check everything and say what the restore would do; change nothing.")
    var dryRun = false

    /// More jobs than this gain nothing on any server snap has been measured on, and each holds a
    /// connection; the server's free connections cap them further (see `DumpRestore.preflight`).
    static let maxJobs = 64

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Parallel pg_restore jobs, 1 to \(maxJobs); 1 streams without a temporary copy. Default: one per CPU (at most 4) when the dump's data is spread over several tables, else 1.",
            valueName: "n"))
    var jobs: Int?

    /// Parallel jobs pay when the data is spread over tables (13% faster on the benchmark's app
    /// database with 2 jobs); a dump that is mostly one table gains nothing and pays for the
    /// temporary copy (8% slower on a 200 MB pgbench dump, 40% on 1.4 GB). The snapshot records
    /// the layout; without it (imported dumps, older snapshots) one job.
    static func defaultJobs(_ facts: DatabaseFacts?) -> Int {
        guard facts?.tableData?.worthParallelRestore == true else { return 1 }
        return min(4, max(1, ProcessInfo.processInfo.activeProcessorCount))
    }

    @Flag(name: .customLong("no-db"), help: "Do not restore the database.")
    var noDB = false

    @Flag(name: .customLong("no-storage"), help: "Do not restore the storage folder.")
    var noStorage = false

    @Flag(name: .customLong("no-owner"), help: "pg_restore --no-owner: the restoring role owns every object.")
    var noOwner = false

    @Flag(name: .customLong("no-acl"), help: "pg_restore --no-acl: skip GRANT and REVOKE.")
    var noACL = false

    func validate() throws {
        if let jobs, !(1...Self.maxJobs).contains(jobs) {
            throw ValidationError("--jobs must be from 1 to \(Self.maxJobs)")
        }
        if noStorage && storageTo != nil { throw ValidationError("--storage-to and --no-storage exclude each other") }
    }

    func run() throws {
        let (repository, lock) = try global.openRepository(locking: .shared)
        defer { withExtendedLifetime(lock) {} }
        let snapshot = try repository.resolve(id)
        let hasDatabase = snapshot.record.sources.database != nil
        let hasStorage = Restorer.hasStorage(snapshot)
        if db != nil && !hasDatabase {
            throw CommandFailure(
                message: "snapshot \(snapshot.shortID) has no database; leave out --db", status: ExitStatus.usage)
        }
        if storageTo != nil && !hasStorage {
            throw CommandFailure(
                message: "snapshot \(snapshot.shortID) has no storage folder; leave out --storage-to",
                status: ExitStatus.usage)
        }
        let restoreDatabase = hasDatabase && !noDB
        let restoreStorage = hasStorage && !noStorage
        if restoreStorage && storageTo == nil {
            throw CommandFailure(
                message: "snapshot \(snapshot.shortID) has a storage folder: pass --storage-to DIR, or --no-storage",
                status: ExitStatus.usage)
        }
        guard restoreDatabase || restoreStorage else {
            throw CommandFailure(
                message: "nothing to restore from snapshot \(snapshot.shortID)", status: ExitStatus.usage)
        }
        // libpq's default database is the user's name (often "postgres"): --clean replaces what
        // it names, so that must be a choice.
        let environment = ProcessInfo.processInfo.environment
        if restoreDatabase && clean && !(db.map(PostgresConnection.namesDatabase) ?? false)
            && [environment["PGDATABASE"], environment["PGSERVICE"]].allSatisfy({ $0?.isEmpty ?? true })
        {
            throw CommandFailure(
                message:
                    "--clean replaces the target database: name it with --db (or PGDATABASE), or leave out --clean",
                status: ExitStatus.usage)
        }

        // Every check before any change: the folder, the snapshot's paths, then the database.
        var files: Restorer?
        if restoreStorage, let storageTo {
            let restorer = Restorer(repository: repository, snapshot: snapshot, target: storageTo, clean: clean)
            restorer.onNote = note
            try restorer.prepare()
            files = restorer
        }
        let database = restoreDatabase ? try DatabaseTarget(self, repository, snapshot) : nil
        if dryRun {
            if let database { print(try database.plan()) }
            if let files, let storageTo { print(Self.describe(try files.plan(), target: storageTo, clean: clean)) }
            print("dry run: nothing was changed")
            return
        }
        if let database, !database.sessions.isEmpty {
            note(
                "--clean ends the \(database.sessions.count) session(s) on database \"\(database.name)\" when it swaps the restored copy in: \(DatabaseSession.list(database.sessions))"
            )
        }

        // The folder is built on its own thread (beside the target, where it can be) while
        // pg_restore loads the database (into a new database beside the target with --clean).
        // Only when both are whole is either swapped in: the database first (its swap can be
        // refused, by a session that will not end), then the folder.
        let storageWork = files.map { restorer in BackgroundWork { try restorer.stage() } }
        let databaseResult = Result { try database?.load() }
        let storageResult = storageWork.map { work in Result { try work.wait() } }

        var summary: RestoreSummary?
        var commitFailure: (any Error)?
        switch (databaseResult, storageResult) {
        case (.success(let loaded), .success?), (.success(let loaded), nil):
            do {
                if let loaded {
                    summary = loaded
                    summary?.endedSessions = try database?.restore.commit() ?? []
                }
                try files?.commit()
            } catch {
                commitFailure = error
                files?.discard()
            }
        default:
            // One side failed: the other keeps its target as it was, where it can.
            database?.restore.discard()
            files?.discard()
        }
        if let summary {
            if !summary.endedSessions.isEmpty {
                note(
                    "ended \(summary.endedSessions.count) session(s) on database \"\(summary.database)\": \(DatabaseSession.list(summary.endedSessions, limit: 10))"
                )
            }
            var line =
                "restored database \(summary.database) with \(summary.jobs) job\(summary.jobs == 1 ? "" : "s"): \(summary.tables) tables, about \(summary.rows) rows (analyzed)"
            if summary.databaseSettings > 0 { line += ", \(summary.databaseSettings) database-level setting(s)" }
            if summary.replaced { line += "; the previous database was replaced" }
            print(line)
        }
        if commitFailure == nil, case .success(let statistics)? = storageResult, let storageTo {
            var line =
                "restored storage into \(storageTo): \(statistics.files) files (\(formatBytes(statistics.bytes))), \(statistics.directories) folders, \(statistics.symlinks) symlinks"
            if clean { line += "; removed \(statistics.removed) entries the snapshot does not have" }
            print(line)
        }
        let databaseOutcome =
            database == nil
            ? "" : summary != nil ? "; the database was restored" : clean ? "; the database was not changed" : ""
        if let commitFailure {
            // The database swapped in, the folder could not be: say which is which.
            guard summary != nil, let storageTo else { throw commitFailure }
            throw CommandFailure(
                message: "\(commitFailure); the database was restored, the storage folder \(storageTo) was not",
                status: ExitStatus.failure)
        }
        if case .failure(let error) = databaseResult {
            guard let storageTo, case .success? = storageResult else { throw error }
            throw CommandFailure(
                message: "\(error); the storage folder \(storageTo) \(storageOutcome(files, written: true))",
                status: ExitStatus.failure)
        }
        if case .failure(let error)? = storageResult {
            throw CommandFailure(
                message:
                    "storage restore into \(storageTo ?? "") failed: \(error); it \(storageOutcome(files, written: false))\(databaseOutcome)",
                status: ExitStatus.failure)
        }
    }

    /// What a storage restore that was not swapped in left, for messages: beside the target, the
    /// target as it was; in place, what was `written`, whole or not.
    private func storageOutcome(_ files: Restorer?, written: Bool) -> String {
        guard case .inPlace? = files?.method else { return "was left as it was" }
        return written
            ? "was restored in place (it could not be built beside)"
            : "is partly restored: run the restore again with --clean"
    }

    /// The storage part of `--dry-run`.
    static func describe(_ plan: RestorePlan, target: String, clean: Bool) -> String {
        func counted(_ changes: RestorePlan.Changes) -> String {
            var kinds: [String] = []
            if changes.files > 0 { kinds.append("\(changes.files) file(s)") }
            if changes.folders > 0 { kinds.append("\(changes.folders) folder(s)") }
            if changes.symlinks > 0 { kinds.append("\(changes.symlinks) symlink(s)") }
            return kinds.isEmpty ? "none" : kinds.joined(separator: ", ")
        }
        var how: String
        switch plan.method {
        case .beside: how = "built beside \(target) and swapped in"
        case .inPlace(let reason): how = "written into \(target) in place (\(reason))"
        }
        var lines = ["storage: would restore \(formatBytes(plan.bytes)) of files, \(how)"]
        for (label, changes) in [
            ("new", plan.new), ("replaced", plan.replaced), ("unchanged", plan.unchanged),
            ("removed", plan.removed),
        ] where changes.count > 0 || label != "removed" || clean {
            var line = "  \(label): \(counted(changes))"
            if !changes.examples.isEmpty {
                line +=
                    ": " + changes.examples.joined(separator: ", ")
                    + (changes.count > changes.examples.count ? ", ..." : "")
            }
            lines.append(line)
        }
        lines += plan.notes.map { "  note: \($0)" }
        return lines.joined(separator: "\n")
    }

    private func note(_ text: String) { StandardError.write("snap: note: \(text)\n") }

    /// The database side of a restore: checked when made, loaded by `load()`.
    private struct DatabaseTarget {
        let restore: DumpRestore
        let entry: ManifestEntry
        let clean: Bool
        /// The other sessions on the target, which `--clean` ends when it swaps.
        let sessions: [DatabaseSession]
        let repository: Repository
        var name: String { restore.database }

        /// Connects to the target and checks everything: the dump's objects are all in the
        /// repository, its table of contents (format, roles), the tools, the target empty or
        /// replaceable.
        init(_ command: RestoreCommand, _ repository: Repository, _ snapshot: Snapshot) throws {
            guard let entry = try ManifestReader(repository: repository).databaseEntry(snapshot.record.manifest) else {
                throw SnapError(
                    .corrupt, "snapshot \(snapshot.shortID) records a database but its manifest has no dump")
            }
            // Every object of the dump is there before anything is created or loaded.
            if let missing = try entry.chunks.first(where: { try !repository.store.contains($0) }) {
                throw SnapError(
                    .notFound,
                    "object \(missing.hex) of snapshot \(snapshot.shortID)'s database dump is missing from the repository; nothing was changed; run `snap check`"
                )
            }
            var options = RestoreOptions(
                jobs: command.jobs ?? RestoreCommand.defaultJobs(snapshot.record.sources.database),
                noOwner: command.noOwner, noACL: command.noACL, dumpFacts: snapshot.record.sources.database,
                applicationName: "snap")
            options.onNote = { StandardError.write("snap: note: \($0)\n") }
            let head = StreamReader(repository: repository, chunks: entry.chunks, size: entry.size)
            let contents = try DumpTableOfContents.read(from: { try head.read(into: $0) })
            restore = try DumpRestore(conninfo: command.db, options: options)
            try restore.preflight(replacing: command.clean, contents: contents)
            if !command.clean { try restore.requireEmpty() }
            sessions = command.clean ? try restore.targetSessions() : []
            self.entry = entry
            self.clean = command.clean
            self.repository = repository
        }

        /// What the restore would do, for `--dry-run`.
        func plan() throws -> String {
            let size = formatBytes(entry.size)
            guard clean else {
                return "database: would load the snapshot's dump (\(size)) into the empty database \"\(name)\""
            }
            var line =
                "database: would load the snapshot's dump (\(size)) into a new database beside \"\(name)\", then swap it in for \"\(name)\" and drop the old one"
            if !sessions.isEmpty {
                line += "; \(sessions.count) session(s) on it would be ended: \(DatabaseSession.list(sessions))"
            }
            return line
        }

        /// Loads the dump (into a replacement with `--clean`; `restore.commit()` then swaps it in).
        func load() throws -> RestoreSummary {
            if clean { try restore.prepareReplacement() }
            // Two threads load and decompress chunks ahead of pg_restore (or of the temporary
            // file a parallel restore reads).
            let stream = StreamReader(repository: repository, chunks: entry.chunks, size: entry.size, readAhead: 2)
            return try restore.restore(size: entry.size, reading: { try stream.read(into: $0) })
        }
    }
}
