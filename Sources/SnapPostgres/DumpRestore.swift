import CLinux
import Foundation
import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

/// Settings for a restore.
public struct RestoreOptions {
    /// pg_restore --jobs. Above 1, a streamed dump is first written to a temporary file, because
    /// parallel restore has to seek in the archive.
    public var jobs: Int
    /// pg_restore --no-owner: objects belong to the restoring role instead of their original owners
    /// (needed when those roles do not exist on the target server).
    public var noOwner: Bool
    /// pg_restore --no-acl: skip GRANT/REVOKE (same reason).
    public var noACL: Bool
    /// The facts recorded with the dump, when known: version messages name the dump's server.
    public var dumpFacts: DatabaseFacts?
    /// Where the temporary copy for a parallel restore goes; nil means $TMPDIR, else /tmp.
    public var spoolDirectory: String?
    /// The environment pg_restore is looked up in and started from (PATH, SNAP_PG_BIN).
    public var environment: [String: String]
    public var applicationName: String
    public var stderrLimit: Int
    /// Called with each note as soon as it is known (before the restore runs), so that a restore
    /// that then fails has still said it; the summary lists the notes too.
    public var onNote: ((String) -> Void)?

    public init(
        jobs: Int = 1, noOwner: Bool = false, noACL: Bool = false, dumpFacts: DatabaseFacts? = nil,
        spoolDirectory: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment,
        applicationName: String = "snap", stderrLimit: Int = 64 * 1024
    ) {
        self.jobs = jobs
        self.noOwner = noOwner
        self.noACL = noACL
        self.dumpFacts = dumpFacts
        self.spoolDirectory = spoolDirectory
        self.environment = environment
        self.applicationName = applicationName
        self.stderrLimit = stderrLimit
    }
}

/// What a restore put into the target.
public struct RestoreSummary: Sendable, Equatable {
    /// The target database.
    public var database: String
    /// Ordinary and partitioned tables outside the system schemas (partitions not counted twice).
    public var tables: Int
    /// Rows in those tables, from `pg_class.reltuples` right after ANALYZE.
    ///
    /// Exact for tables small enough that ANALYZE reads all of them (up to 300 ×
    /// default_statistics_target rows, 30,000 by default), an estimate from a sample above that:
    /// counting every row of a large database would double the restore's time for a number
    /// shown as a summary.
    public var rows: Int64
    /// Things the user should know about how it went (a parallel restore run with one job, say).
    public var notes: [String] = []
    /// pg_restore jobs that did the work.
    public var jobs = 1
    /// Statements about the database itself that the dump held and the restore applied
    /// (ALTER DATABASE ... SET, its comment, grants on it, ...).
    public var databaseSettings = 0
    /// Whether the dump was loaded into a new database that then replaced the live one (`--clean`).
    public var replaced = false
    /// The sessions that were ended to swap the new database in.
    public var endedSessions: [DatabaseSession] = []

    public init(database: String, tables: Int, rows: Int64) {
        self.database = database
        self.tables = tables
        self.rows = rows
    }
}

/// Restores a custom-format dump (`pg_dump -Fc`) into one database with `pg_restore --exit-on-error`.
///
/// `preflight` checks everything that can be known before a change (pg_restore and the dump's
/// format and version, the roles the dump needs, the right to replace the target); the caller then
/// decides what happens to what is there: `requireEmpty()` refuses a target with user objects (a
/// restore on top of them fails half-way or mixes data), and `prepareReplacement()` is `--clean`:
/// the dump is loaded into a new database beside the live one, which `commit()` swaps in only
/// once it is complete (`ReplacementDatabase`). One of the `restore` functions runs pg_restore,
/// applies the database-level settings the dump holds, runs ANALYZE and returns a summary; a
/// failure there drops the replacement, leaving the live database as it was.
///
/// Every error names its step: connect, check empty, recreate, pg_restore, analyze, swap.
public final class DumpRestore {
    public private(set) var options: RestoreOptions
    /// The connection to the database being loaded: the target, or its replacement.
    public private(set) var connection: PostgresConnection
    /// The target database's name, as the server gives it once it is known.
    public private(set) var database: String
    /// Where the server is, for messages.
    private let location: String
    /// `--clean`: the new database loaded beside the target.
    private var replacement: ReplacementDatabase?
    /// The dump's table of contents, when `preflight` read it (else `restore` reads it as the
    /// dump streams past).
    private var contents: DumpTableOfContents?

    /// How messages name what is being loaded.
    private var target: String {
        replacement == nil
            ? "database \"\(database)\" at \(location)" : "the new copy of database \"\(database)\" at \(location)"
    }

    /// Connects to the target database, like psql with the same `conninfo` (nil: libpq's
    /// environment). The target must exist.
    public init(conninfo: String?, options: RestoreOptions = RestoreOptions()) throws {
        self.options = options
        do {
            connection = try PostgresConnection(conninfo: conninfo, applicationName: options.applicationName)
        } catch let error as PostgresError {
            // The server's reason names a missing database; the fix is to create it.
            let reason = error.cause.map { "\($0)" } ?? ""
            guard error.code == .connect,
                let missing = reason.firstMatch(of: /database "((?:[^"]|"")*)" does not exist/)?.output.1
            else { throw error }
            throw PostgresError(
                .connect,
                "the target database \"\(missing)\" does not exist; create it first (createdb \(PostgresConnection.shellQuoted(String(missing)))) and restore into it; nothing was changed"
            )
        }
        database = connection.database
        location = connection.displayLocation
    }

    // MARK: Check empty

    /// Up to `limit` user objects in the target, described like "table public.orders": tables,
    /// views, sequences, composite and other types, functions, schemas other than public (outside
    /// pg_catalog, information_schema and pg_*), and large objects. Objects that belong to an
    /// extension are left out (a dump says CREATE EXTENSION IF NOT EXISTS, which does not clash),
    /// and so is the empty public schema every database has.
    public func userObjects(limit: Int = 10) throws -> [String] {
        let userSchema = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
        func notInExtension(_ catalog: String, _ oid: String) -> String {
            "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '\(catalog)'::regclass AND e.objid = \(oid) AND e.deptype = 'e')"
        }
        let sql = """
            SELECT kind || ' ' || name FROM (
              SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                       WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table'
                       ELSE 'type' END AS kind,
                     quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND \(userSchema) AND \(notInExtension("pg_class", "c.oid"))
              UNION ALL
              SELECT 'function', quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '()'
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE \(userSchema) AND \(notInExtension("pg_proc", "p.oid"))
              UNION ALL
              SELECT 'type', quote_ident(n.nspname) || '.' || quote_ident(t.typname)
                FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
               WHERE t.typrelid = 0 AND \(userSchema) AND \(notInExtension("pg_type", "t.oid"))
                 AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.oid = t.typelem AND el.typarray = t.oid)
              UNION ALL
              SELECT 'schema', quote_ident(n.nspname) FROM pg_namespace n
               WHERE \(userSchema) AND n.nspname <> 'public' AND \(notInExtension("pg_namespace", "n.oid"))
              UNION ALL
              SELECT 'large object', l.oid::text FROM pg_largeobject_metadata l
            ) objects ORDER BY kind = 'large object', kind = 'schema', kind <> 'table', kind, name LIMIT $1
            """
        do {
            return try connection.query(sql, [String(limit)]).compactMap { $0.first ?? nil }
        } catch {
            throw PostgresError(.checkEmpty, "cannot check whether \(target) is empty", cause: error)
        }
    }

    /// Checks, before anything is changed: with `replacing`, that the role may create the target
    /// again with its owner; that pg_restore is there and can read the dump (a pg_restore older
    /// than the pg_dump that made it cannot); and, from the dump's first bytes (`contents`), that
    /// the dump is an archive pg_restore loads at all (not a plain SQL script from an imported
    /// archive), that the roles owning its objects exist and may be given them (unless
    /// `noOwner`), and that the roles its grants name exist (unless `noACL`). It also caps the
    /// jobs at half the server's free connections. The storage folder is restored alongside, so a
    /// refusal must come before either starts.
    public func preflight(replacing: Bool = false, contents reading: DumpTableOfContents.Reading? = nil) throws {
        if replacing {
            let allowed = try? connection.query(
                """
                SELECT r.rolsuper OR (r.rolcreatedb AND pg_has_role(current_user, d.datdba, 'MEMBER'))
                FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()
                """
            ).first?.first
            guard allowed == "t" else {
                throw PostgresError(
                    .recreate,
                    "--clean loads the snapshot into a new database and swaps it in for \(target), and role \"\(connection.user)\" may not (it needs CREATEDB and membership in the database owner's role); nothing was changed"
                )
            }
            ReplacementDatabase.noteLeftovers(of: database, on: connection) { options.onNote?($0) }
        }
        switch reading {
        case .notCustomFormat(let kind):
            throw PostgresError(
                .unreadableDump,
                "the snapshot's database.dump is \(kind), not a pg_dump custom-format archive, so pg_restore cannot load it; nothing was changed; write it out with `snap export` and load it with psql"
            )
        case .unreadable(let reason):
            options.onNote?(
                "cannot read the dump's table of contents (\(reason)): the roles it needs are not checked first, and its database-level settings are not carried over"
            )
        case .read(let read):
            contents = read
            try checkRoles(read)
        case .needMore, nil:
            break
        }
        let tool = try restoreTool()
        if let facts = options.dumpFacts, let made = PostgresTools.parseVersionNumber(facts.pgDumpVersion),
            PostgresTools.majorKey(tool.versionNumber) < PostgresTools.majorKey(made)
        {
            throw PostgresError(
                .versionMismatch,
                "pg_restore \(tool.version) cannot read this dump (made by pg_dump \(facts.pgDumpVersion)); nothing was changed; install postgresql-client-\(PostgresTools.majorVersion(made)) or newer (or set \(PostgresTools.binFolderVariable))"
            )
        }
        capJobs()
    }

    /// Refuses a dump whose objects belong to roles the target server lacks or the restoring role
    /// may not give objects to, and one whose grants name missing roles: pg_restore would stop at
    /// the first such `ALTER ... OWNER` or `GRANT`, half-way through.
    private func checkRoles(_ contents: DumpTableOfContents) throws {
        let owners = options.noOwner ? [] : contents.owners
        let grantees = options.noACL ? [] : contents.grantees
        let names = owners.union(grantees).sorted()
        guard !names.isEmpty else { return }
        // PostgreSQL 16 asks for the right to SET ROLE to the new owner; before, membership.
        let right = connection.serverVersionNumber >= 160_000 ? "SET" : "MEMBER"
        let rows = try connection.query(
            """
            SELECT wanted.name, r.oid IS NOT NULL, coalesce(me.rolsuper OR pg_has_role(current_user, r.oid, '\(right)'), false)
            FROM unnest($1::text[]) AS wanted(name) LEFT JOIN pg_roles r ON r.rolname = wanted.name,
                 pg_roles me WHERE me.rolname = current_user
            """, [Self.arrayLiteral(names)])
        let missing = Set(rows.filter { $0[1] == "f" }.compactMap { $0[0] })
        let notGivable = Set(rows.filter { $0[1] == "t" && $0[2] == "f" }.compactMap { $0[0] })
        let server = "the server at \(location)"
        func create(_ roles: [String]) -> String {
            roles.prefix(3).map { "CREATE ROLE \(connection.quoteIdentifier($0));" }.joined(separator: " ")
        }
        if case let absent = owners.intersection(missing).sorted(), !absent.isEmpty {
            throw PostgresError(
                .roles,
                "the dump's objects belong to roles that do not exist on \(server): \(Self.names(absent)); nothing was changed; create them first (\(create(absent))), or pass --no-owner to give every object to role \"\(connection.user)\""
            )
        }
        if case let refused = owners.intersection(notGivable).sorted(), !refused.isEmpty {
            throw PostgresError(
                .roles,
                "role \"\(connection.user)\" may not give the dump's objects to their owners \(Self.names(refused)) (it is neither a superuser nor a member of those roles); nothing was changed; pass --no-owner (every object then belongs to \"\(connection.user)\"), or restore as a superuser"
            )
        }
        if case let absent = grantees.intersection(missing).sorted(), !absent.isEmpty {
            throw PostgresError(
                .roles,
                "the dump grants privileges to roles that do not exist on \(server): \(Self.names(absent)); nothing was changed; create them first (\(create(absent))), or pass --no-acl to leave every grant out"
            )
        }
    }

    /// A few names, quoted, in one line.
    private static func names(_ names: [String]) -> String {
        names.prefix(5).map { "\"\($0)\"" }.joined(separator: ", ")
            + (names.count > 5 ? " and \(names.count - 5) more" : "")
    }

    /// `values` as a PostgreSQL array literal, for a `text[]` parameter.
    static func arrayLiteral(_ values: [String]) -> String {
        let quoted = values.map { value in
            "\"" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                + "\""
        }
        return "{" + quoted.joined(separator: ",") + "}"
    }

    /// Each pg_restore job holds a connection: a large `--jobs` would take the server's last free
    /// connections from the application. Jobs are held to half of those free now.
    private func capJobs() {
        guard options.jobs > 1,
            let value = try? connection.value(
                """
                SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
                       - coalesce(current_setting('reserved_connections', true)::int, 0)
                       - (SELECT count(*) FROM pg_stat_activity)::int
                """), let free = Int(value)
        else { return }
        let allowed = max(1, free / 2)
        guard options.jobs > allowed else { return }
        options.onNote?(
            "--jobs \(options.jobs) would take the server's last free connections (\(max(0, free)) free at \(location)); restoring with \(allowed) job\(allowed == 1 ? "" : "s")"
        )
        options.jobs = allowed
    }

    /// Throws `.targetNotEmpty`, naming a few of the objects found, unless the target is empty.
    public func requireEmpty() throws {
        let found = try userObjects(limit: 4)
        guard !found.isEmpty else { return }
        let shown = found.prefix(3).joined(separator: ", ") + (found.count > 3 ? ", ..." : "")
        throw PostgresError(
            .targetNotEmpty,
            "\(target) is not empty (\(shown)); restore into an empty database, or pass --clean to replace it with the snapshot's"
        )
    }

    // MARK: Replacing the target (--clean)

    /// The other sessions on the target now: `--clean` ends them when it swaps the new database
    /// in, and says so first.
    public func targetSessions() throws -> [DatabaseSession] {
        if let replacement { return try replacement.liveSessions() }
        return try ReplacementDatabase.sessions(on: database, through: connection)
    }

    /// `--clean`: creates the new database the dump is then loaded into, beside the target (see
    /// `ReplacementDatabase`). The target is not touched until `commit()`.
    public func prepareReplacement() throws {
        let created = try ReplacementDatabase(replacing: connection, applicationName: options.applicationName)
        replacement = created
        database = created.liveName
        connection.close()
        do {
            connection = try created.connect()
        } catch {
            created.drop()
            replacement = nil
            throw (error as? PostgresError ?? PostgresError(.recreate, "\(error)")).adding(
                "; it was dropped, and database \"\(database)\" was not changed")
        }
    }

    /// `--clean`, once the load and everything restored alongside succeeded: swaps the new
    /// database in for the target and drops the old one. Does nothing without a replacement.
    public func commit() throws -> [DatabaseSession] {
        guard let replacement else { return [] }
        connection.close()  // a database with sessions cannot be renamed
        do {
            let ended = try replacement.swap(onNote: { options.onNote?($0) })
            self.replacement = nil
            return ended
        } catch let error as PostgresError {
            discard()
            throw error.adding("; the restored copy was dropped, and database \"\(database)\" was not changed")
        }
    }

    /// Drops the replacement of a `--clean` restore that will not be committed (something restored
    /// alongside failed). Without a replacement it does nothing: a restore straight into an empty
    /// target cannot be undone here.
    public func discard() {
        guard let replacement else { return }
        connection.close()
        replacement.drop()
        self.replacement = nil
    }

    /// Runs `body`; when it fails with a replacement in place, drops it and says that the target
    /// was not changed.
    private func droppingReplacementOnFailure<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            guard replacement != nil else { throw error }
            let dropped = replacement?.drop() ?? false
            replacement = nil
            let outcome =
                dropped
                ? "; the new copy was dropped, and database \"\(database)\" was not changed"
                : "; database \"\(database)\" was not changed (drop the unfinished copy snap_restore_… left beside it)"
            throw (error as? PostgresError ?? PostgresError(.restoreFailed, "\(error)")).adding(outcome)
        }
    }

    // MARK: Restore

    /// Restores a dump read from `read` (which fills the buffer and returns the count, 0 at the
    /// end, like `DatabaseDump.read`), applies the database-level settings it holds, then runs
    /// ANALYZE.
    ///
    /// With `jobs` 1 the bytes go straight to pg_restore's stdin. With more, they are written to a
    /// temporary file first (removed afterwards) and `restore(fromFile:)` runs. When `read` throws,
    /// pg_restore is stopped and the error is rethrown inside a `.restoreFailed` error. Any
    /// failure drops a replacement (`--clean`: the target is unchanged); without one the target
    /// is then partly restored.
    ///
    /// `size` is the dump's size when known: a parallel restore whose temporary folder has less
    /// room than that (and a tenth more, at least 256 MiB), or is in memory (tmpfs), streams with
    /// one job instead, and says so in the summary's notes.
    public func restore(size: UInt64? = nil, reading read: (UnsafeMutableRawBufferPointer) throws -> Int) throws
        -> RestoreSummary
    {
        try withoutActuallyEscaping(read) { read in
            try droppingReplacementOnFailure { try load(reading: read, size: size) }
        }
    }

    private func load(reading read: @escaping (UnsafeMutableRawBufferPointer) throws -> Int, size: UInt64?) throws
        -> RestoreSummary
    {
        // The table of contents comes first in the stream: read it on the way when preflight
        // did not, for the database-level settings.
        var collector = TableOfContentsCollector(keepText: true)
        let collecting = contents == nil
        let reading = { (buffer: UnsafeMutableRawBufferPointer) throws -> Int in
            let count = try read(buffer)
            if collecting { collector.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) }
            return count
        }
        var notes: [String] = []
        if options.jobs > 1 {
            let folder = spoolFolder
            if isInMemory(folder) {
                notes.append(
                    "\(folder) is in memory (tmpfs), and a parallel restore would copy the whole dump there; restoring with one job (set TMPDIR to a folder on disk for --jobs)"
                )
            } else if let size, let free = freeBytes(folder), free < size + max(256 << 20, size / 10) {
                // Room to spare beyond the copy: the folder is usually shared with others.
                notes.append(
                    "\(folder) has \(free >> 20) MiB free, too little for the \(size >> 20) MiB temporary copy a parallel restore needs; restoring with one job (set TMPDIR to a roomier folder for --jobs)"
                )
            }
            if let note = notes.last {
                options.onNote?(note)
            } else {
                let copy = try spool(reading)
                collector.finish()
                if collecting, case .read(let read) = collector.reading { contents = read }
                return try withExtendedLifetime(copy) { try loadFile(copy.path) }
            }
        }
        let tool = try restoreTool()
        let process = try ChildProcess(
            name: "pg_restore", executable: tool.path, arguments: arguments(file: nil),
            environment: childEnvironment(), input: .stream, captureOutput: false, errorLimit: options.stderrLimit)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        do {
            while true {
                let count = try buffer.withUnsafeMutableBytes { try reading($0) }
                if count == 0 { break }
                let accepted = try buffer.withUnsafeBytes {
                    try process.write(UnsafeRawBufferPointer(rebasing: $0[0..<count]))
                }
                if !accepted { break }  // pg_restore stopped reading: its exit status says why
            }
        } catch {
            process.terminate()
            process.wait()
            // A failed write to pg_restore is a PostgresError of its own; anything else came from `read`.
            let step = error is PostgresError ? "sending the dump to pg_restore failed" : "reading the dump failed"
            throw PostgresError(
                .restoreFailed, "\(step); pg_restore was stopped" + (partlyRestored.map { " and \($0)" } ?? ""),
                cause: error)
        }
        process.closeInput()
        try check(process.wait(), stderr: process.errorText, tool: tool)
        collector.finish()
        if collecting, case .read(let read) = collector.reading { contents = read }
        var summary = try finishLoad()
        summary.notes = notes
        return summary
    }

    /// What a failed load leaves, for messages: a replacement is dropped (and the caller says so),
    /// a target loaded straight is partly restored.
    private var partlyRestored: String? {
        replacement != nil
            ? nil
            : "\(target) is partly restored (it was empty): drop and create it again before another restore into it, or restore with --clean"
    }

    /// Restores the dump in the file at `path` (pg_restore reads it itself, with `--jobs` when
    /// asked), applies its database-level settings, then runs ANALYZE. A failure drops a
    /// replacement, as `restore(size:reading:)` does.
    public func restore(fromFile path: String) throws -> RestoreSummary {
        try droppingReplacementOnFailure {
            if contents == nil, let handle = FileHandle(forReadingAtPath: path) {
                var collector = TableOfContentsCollector(keepText: true)
                while !collector.isDecided {
                    let data = handle.readData(ofLength: 1 << 20)
                    if data.isEmpty { break }
                    data.withUnsafeBytes { collector.feed($0) }
                }
                collector.finish()
                if case .read(let read) = collector.reading { contents = read }
            }
            return try loadFile(path)
        }
    }

    private func loadFile(_ path: String) throws -> RestoreSummary {
        let tool = try restoreTool()
        let process = try ChildProcess(
            name: "pg_restore", executable: tool.path, arguments: arguments(file: path),
            environment: childEnvironment(), input: .none, captureOutput: false, errorLimit: options.stderrLimit)
        try check(process.wait(), stderr: process.errorText, tool: tool)
        var summary = try finishLoad()
        summary.jobs = max(1, options.jobs)
        return summary
    }

    /// What follows a load that pg_restore finished: the database-level settings of the dump,
    /// ANALYZE, and for a replacement the target's connection limit, unless the dump set its own
    /// (at CREATE, a limit of 0 or below the jobs would have refused pg_restore's own sessions).
    private func finishLoad() throws -> RestoreSummary {
        FaultInjection.step()
        let settings = try applyDatabaseSettings()
        var summary = try analyze()
        summary.databaseSettings = settings.applied
        summary.replaced = replacement != nil
        if let limit = replacement?.liveConnectionLimit, !settings.setConnectionLimit {
            do {
                try connection.execute(
                    "ALTER DATABASE \(connection.quoteIdentifier(connection.database)) CONNECTION LIMIT \(limit)")
            } catch {
                throw PostgresError(
                    .analyze, "cannot give \(target) the connection limit \(limit) of the database it replaces",
                    cause: error)
            }
        }
        FaultInjection.step()
        return summary
    }

    /// Applies the entries about the database itself that the dump holds (DATABASE PROPERTIES:
    /// ALTER DATABASE ... SET, ALTER ROLE ... IN DATABASE ... SET, a connection limit; COMMENT ON
    /// DATABASE; grants on it; security labels), pointed at the database being loaded. pg_restore
    /// applies them only with `--create`, which would create the database under the dumped name
    /// itself; without them a restored app loses its search_path, time zone or grants.
    ///
    /// On a replacement a statement that fails fails the restore (the target stays as it was);
    /// loaded straight into a target, the data is in, and a failed statement becomes a note. A
    /// per-role setting for a role this server lacks is left out with a note either way.
    private func applyDatabaseSettings() throws -> (applied: Int, setConnectionLimit: Bool) {
        guard let contents else { return (0, false) }
        var applied = 0
        var setConnectionLimit = false
        let name = connection.quoteIdentifier(connection.database)
        for entry in contents.databaseLevelEntries where !(entry.desc == "ACL" && options.noACL) {
            for statement in SQLText.statements(entry.definition) ?? [] {
                let shown = String(oneLine(statement).prefix(120))
                guard let pointed = SQLText.renamingDatabase(in: statement, from: contents.databaseName, to: name)
                else {
                    options.onNote?(
                        "not carried over from the dump: `\(shown)` (it names no database to point at \(target))")
                    continue
                }
                do {
                    try connection.execute(pointed)
                } catch let error as PostgresError {
                    let reason = error.cause.map { "\($0)" } ?? error.message
                    let perRole = SQLText.tokens(statement)?.prefix(2).map(\.value) == ["alter", "role"]
                    if replacement != nil && !(perRole && error.sqlState == "42704") {
                        throw PostgresError(
                            .restoreFailed, "cannot apply the database setting `\(shown)` of the snapshot to \(target)",
                            cause: error.cause ?? error)
                    }
                    options.onNote?("not carried over from the dump: `\(shown)` (\(reason))")
                    continue
                }
                applied += 1
                let words = SQLText.tokens(statement)?.map(\.value) ?? []
                if zip(words, words.dropFirst()).contains(where: { $0 == ("connection", "limit") }) {
                    setConnectionLimit = true
                }
            }
        }
        return (applied, setConnectionLimit)
    }

    private var spoolFolder: String {
        options.spoolDirectory ?? options.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
    }

    /// Whether `folder` is on a filesystem held in memory (tmpfs, ramfs), where a copy of the
    /// dump would take the server's memory.
    private func isInMemory(_ folder: String) -> Bool {
        let type = snap_filesystem_type(folder)
        return type == 0x0102_1994 || type == 0x8584_58f6
    }

    /// Bytes an unprivileged user may still write in `folder`'s filesystem; nil when unknown.
    private func freeBytes(_ folder: String) -> UInt64? {
        var status = statvfs()
        guard statvfs(folder, &status) == 0 else { return nil }
        return UInt64(status.f_bavail) * UInt64(status.f_frsize)
    }

    /// Runs ANALYZE on the target, so the planner has statistics from the first query and the
    /// row counts below are right, then sums up what is there.
    public func analyze() throws -> RestoreSummary {
        do {
            try connection.execute("ANALYZE")
            let row = try connection.query(
                """
                SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition),
                       coalesce(sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind = 'r'), 0)::bigint
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
                """
            ).first
            return RestoreSummary(
                database: database, tables: Int(row?[0] ?? "") ?? 0, rows: Int64(row?[1] ?? "") ?? 0)
        } catch {
            throw PostgresError(.analyze, "restored, but ANALYZE of \(target) failed", cause: error)
        }
    }

    private func restoreTool() throws -> PostgresTool {
        // Newer pg_restore reads older archives; any version talks to the server in plain SQL.
        try PostgresTools.locate(
            "pg_restore", serverVersionNumber: connection.serverVersionNumber, requireServerMajor: false,
            environment: options.environment)
    }

    private func arguments(file: String?) -> [String] {
        // A connection string with only dbname, quoted as libpq reads a connection string (not
        // as SQL): a name with '=', a quote or a backslash stays that name. The rest of the
        // connection comes from the environment, so no password is ever on the command line.
        var arguments = [
            "--exit-on-error", "--no-password",
            "--dbname=dbname=\(PostgresConnection.conninfoQuoted(connection.database))",
        ]
        if options.noOwner { arguments.append("--no-owner") }
        if options.noACL { arguments.append("--no-acl") }
        if let file {
            if options.jobs > 1 { arguments.append("--jobs=\(options.jobs)") }
            arguments.append(file)
        }
        return arguments
    }

    private func childEnvironment() -> [String: String] {
        connection.childEnvironment(base: options.environment, applicationName: options.applicationName + " pg_restore")
    }

    /// Turns pg_restore's exit into an error that names the reason and, for an archive it cannot
    /// read, both versions and the fix.
    private func check(_ termination: Termination, stderr: String, tool: PostgresTool) throws {
        guard !termination.succeeded else { return }
        let reason = failureReason(fromStderr: stderr)
        let targetVersion = PostgresTools.versionString(connection.serverVersionNumber)
        let dump = options.dumpFacts.map {
            "made by pg_dump \($0.pgDumpVersion) from PostgreSQL \($0.serverVersion)"
        }
        if stderr.contains("unsupported version") {
            let needed =
                options.dumpFacts.map {
                    "postgresql-client-\(PostgresTools.majorVersion($0.serverVersionNumber))"
                } ?? "a newer postgresql-client"
            throw PostgresError(
                .versionMismatch,
                "pg_restore \(tool.version) cannot read this dump" + (dump.map { " (\($0))" } ?? "")
                    + " to restore into PostgreSQL \(targetVersion) at \(connection.displayLocation): \(reason ?? "unsupported version"); the dump is newer than the target's tools: restore into a server at least as new as the dump's, or install \(needed) (or set \(PostgresTools.binFolderVariable))"
            )
        }
        var message =
            "pg_restore into \(target) failed (\(termination))" + (reason.map { ": \($0)" } ?? "")
            + (partlyRestored.map { "; \($0)" } ?? "")
        if let facts = options.dumpFacts,
            PostgresTools.majorKey(facts.serverVersionNumber) > PostgresTools.majorKey(connection.serverVersionNumber)
        {
            message +=
                "; note: the dump comes from PostgreSQL \(facts.serverVersion), newer than the target's \(targetVersion): restore into PostgreSQL \(PostgresTools.majorVersion(facts.serverVersionNumber)) or newer"
        }
        throw PostgresError(.restoreFailed, message)
    }

    /// Writes the stream to a new private temporary file. The data offsets pg_dump could not
    /// write into a pipe are set in the copy (`DumpDataIndex`), so that the parallel workers seek
    /// to their tables instead of reading the archive from the start.
    func spool(_ read: (UnsafeMutableRawBufferPointer) throws -> Int) throws -> SpooledDump {
        let folder = spoolFolder
        var template = Array("\(folder)/snap-restore-XXXXXX.dump".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemps($0.baseAddress!, 5) }
        guard fd >= 0 else {
            throw PostgresError(
                .restoreFailed, "cannot create a temporary file in \(folder) for the parallel restore",
                cause: PosixError(errno))
        }
        let copy = SpooledDump(fd: fd, name: template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        // Kept open while pg_restore runs, so not to be inherited by it.
        guard fcntl(fd, F_SETFD, FD_CLOEXEC) == 0 else {
            throw PostgresError(
                .restoreFailed, "cannot set up a temporary file in \(folder) for the parallel restore",
                cause: PosixError(errno))
        }
        let failure = "cannot write the temporary file in \(folder) for the parallel restore"
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var index = DumpDataIndex()
        do {
            while true {
                let count = try buffer.withUnsafeMutableBytes { try read($0) }
                if count == 0 { break }
                buffer.withUnsafeBytes { index.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                var offset = 0
                while offset < count {
                    let written = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, count - offset) }
                    if written < 0 && errno == EINTR { continue }
                    guard written > 0 else {
                        throw PostgresError(.restoreFailed, failure, cause: PosixError(written < 0 ? errno : EIO))
                    }
                    offset += written
                }
            }
            for patch in index.finish() {
                let written = patch.bytes.withUnsafeBytes {
                    pwrite(fd, $0.baseAddress!, $0.count, off_t(patch.position))
                }
                guard written == patch.bytes.count else {
                    throw PostgresError(.restoreFailed, failure, cause: PosixError(written < 0 ? errno : EIO))
                }
            }
        } catch {
            if error is PostgresError { throw error }
            throw PostgresError(
                .restoreFailed, "reading the dump failed; nothing was restored into \(target)", cause: error)
        }
        return copy
    }
}
