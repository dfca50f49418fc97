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

    public init(database: String, tables: Int, rows: Int64) {
        self.database = database
        self.tables = tables
        self.rows = rows
    }
}

/// Restores a custom-format dump (`pg_dump -Fc`) into one database with `pg_restore --exit-on-error`.
///
/// The caller decides what happens to what is already there: `requireEmpty()` refuses a target
/// with user objects (a restore on top of them fails half-way or mixes data), and
/// `recreateDatabase()` is `--clean`: drop and create it again from template0. Then one of the
/// `restore` functions runs pg_restore and ANALYZE and returns a summary.
///
/// Every error names its step: connect, check empty, recreate, pg_restore, analyze.
public final class DumpRestore {
    public let options: RestoreOptions
    /// The connection to the target database (replaced by `recreateDatabase()`).
    public private(set) var connection: PostgresConnection
    /// The connection limit of a recreated database, set back once the dump is loaded.
    private var connectionLimit: Int?

    /// The target database's name.
    public var database: String { connection.database }
    private var target: String { "database \"\(connection.database)\" at \(connection.displayLocation)" }

    /// Connects to the target database, like psql with the same `conninfo` (nil: libpq's
    /// environment). The target must exist; `recreateDatabase()` can replace it afterwards.
    public init(conninfo: String?, options: RestoreOptions = RestoreOptions()) throws {
        self.options = options
        connection = try PostgresConnection(conninfo: conninfo, applicationName: options.applicationName)
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

    /// Checks, before anything is changed, that pg_restore is there and can read the dump (a
    /// pg_restore older than the pg_dump that made it cannot), and, with `recreating`, that the
    /// role may drop the target and create it again with its owner: the storage folder is
    /// restored alongside, so a refusal must come before either starts.
    public func preflight(recreating: Bool = false) throws {
        if recreating {
            let allowed = try? connection.query(
                """
                SELECT r.rolsuper OR (r.rolcreatedb AND pg_has_role(current_user, d.datdba, 'MEMBER'))
                FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = current_database()
                """
            ).first?.first
            guard allowed == "t" else {
                throw PostgresError(
                    .recreate,
                    "--clean drops and creates \(target) again, and role \"\(connection.user)\" may not (it needs CREATEDB and membership in the database owner's role); nothing was changed"
                )
            }
        }
        let tool = try restoreTool()
        guard let facts = options.dumpFacts, let made = PostgresTools.parseVersionNumber(facts.pgDumpVersion),
            PostgresTools.majorKey(tool.versionNumber) < PostgresTools.majorKey(made)
        else { return }
        throw PostgresError(
            .versionMismatch,
            "pg_restore \(tool.version) cannot read this dump (made by pg_dump \(facts.pgDumpVersion)); nothing was changed; install postgresql-client-\(PostgresTools.majorVersion(made)) or newer (or set \(PostgresTools.binFolderVariable))"
        )
    }

    /// Throws `.targetNotEmpty`, naming a few of the objects found, unless the target is empty.
    public func requireEmpty() throws {
        let found = try userObjects(limit: 4)
        guard !found.isEmpty else { return }
        let shown = found.prefix(3).joined(separator: ", ") + (found.count > 3 ? ", ..." : "")
        throw PostgresError(
            .targetNotEmpty,
            "\(target) is not empty (\(shown)); restore into an empty database, or pass --clean to drop and recreate it"
        )
    }

    // MARK: Recreate

    /// `--clean`: drops the target and creates it again from template0, keeping its encoding,
    /// collation, ctype, locale provider (and ICU rules), tablespace, connection limit and owner.
    /// Works from the `postgres` maintenance database (template1 when the target is `postgres`) on
    /// the same server, as the same user, and ends other sessions on the target (`WITH (FORCE)`,
    /// PostgreSQL 13 and later).
    ///
    /// Database-level settings (ALTER DATABASE ... SET), comments and grants on the database are
    /// not kept: a `pg_dump -Fc` of one database does not carry them either.
    ///
    /// The new database is created first, under a temporary name, and renamed once the old one is
    /// dropped: a role that may not create databases, or not give them that owner, fails before
    /// anything is dropped. Only a failed rename, after the drop, leaves the work half done; its
    /// message says how to finish it.
    public func recreateDatabase() throws {
        let version = connection.serverVersionNumber
        let localeColumns =
            if version >= 170_000 {
                "datlocprovider::text, datlocale"
            } else if version >= 150_000 {
                "datlocprovider::text, daticulocale"
            } else {
                "'c', NULL"
            }
        let settings: [String?]
        do {
            guard
                let row = try connection.query(
                    """
                    SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba), \(localeColumns),
                           current_database(), (SELECT spcname FROM pg_tablespace WHERE oid = dattablespace),
                           datconnlimit::text, \(version >= 160_000 ? "daticurules" : "NULL")
                    FROM pg_database WHERE datname = current_database()
                    """
                ).first
            else { throw PostgresError(.recreate, "the database is missing from pg_database") }
            settings = row
        } catch {
            throw PostgresError(.recreate, "cannot read the settings of \(target) to recreate it", cause: error)
        }
        // The name the server gives, not the one asked for (a pooler may map an alias).
        let name = settings[6] ?? connection.database
        connectionLimit = settings[8].flatMap { Int($0) }.flatMap { $0 == -1 ? nil : $0 }

        let maintenanceName = name == "postgres" ? "template1" : "postgres"
        let maintenance: PostgresConnection
        do {
            maintenance = try connection.connect(toDatabase: maintenanceName, applicationName: options.applicationName)
        } catch {
            throw PostgresError(
                .recreate, "cannot connect to the maintenance database \"\(maintenanceName)\" to recreate \(target)",
                cause: error)
        }
        let location = connection.displayLocation
        connection.close()

        let quotedName = maintenance.quoteIdentifier(name)
        // At most 63 bytes (NAMEDATALEN - 1), cut on a character boundary.
        var base = "snap_restore_" + String(UInt32.random(in: .min ... .max), radix: 16) + "_"
        for character in name where base.utf8.count + String(character).utf8.count <= 63 { base.append(character) }
        let replacement = base
        let quotedReplacement = maintenance.quoteIdentifier(replacement)
        var create = "CREATE DATABASE \(quotedReplacement) TEMPLATE template0"
        if let encoding = settings[0] { create += " ENCODING \(maintenance.quoteLiteral(encoding))" }
        if let collate = settings[1] { create += " LC_COLLATE \(maintenance.quoteLiteral(collate))" }
        if let ctype = settings[2] { create += " LC_CTYPE \(maintenance.quoteLiteral(ctype))" }
        if version >= 150_000 {
            switch settings[4] {
            case "i":
                create += " LOCALE_PROVIDER icu"
                if let locale = settings[5] { create += " ICU_LOCALE \(maintenance.quoteLiteral(locale))" }
            case "b":
                create += " LOCALE_PROVIDER builtin"
                if let locale = settings[5] { create += " BUILTIN_LOCALE \(maintenance.quoteLiteral(locale))" }
            default:
                create += " LOCALE_PROVIDER libc"
            }
        }
        if version >= 160_000, settings[4] == "i", let rules = settings[9] {
            create += " ICU_RULES \(maintenance.quoteLiteral(rules))"
        }
        if let tablespace = settings[7], tablespace != "pg_default" {
            create += " TABLESPACE \(maintenance.quoteIdentifier(tablespace))"
        }
        if let owner = settings[3] { create += " OWNER \(maintenance.quoteIdentifier(owner))" }
        let drop = "DROP DATABASE IF EXISTS \(quotedName)" + (version >= 130_000 ? " WITH (FORCE)" : "")
        // Stopping snap between the drop and the rename would leave the target missing.
        try RunningChildren.deferringTerminationSignals {
            do {
                try maintenance.execute(create)
            } catch {
                throw PostgresError(
                    .recreate,
                    "cannot create the database that replaces \"\(name)\" at \(location) (the role needs CREATEDB, and membership in the owner's role); nothing was changed",
                    cause: error)
            }
            do {
                try maintenance.execute(drop)
            } catch {
                let cleaned = (try? maintenance.execute("DROP DATABASE IF EXISTS \(quotedReplacement)")) != nil
                throw PostgresError(
                    .recreate,
                    "cannot drop database \"\(name)\" at \(location) to replace it; "
                        + (cleaned
                            ? "nothing was changed"
                            : "it is unchanged, but the empty database \"\(replacement)\" was left: drop it"),
                    cause: error)
            }
            do {
                try maintenance.execute("ALTER DATABASE \(quotedReplacement) RENAME TO \(quotedName)")
            } catch {
                throw PostgresError(
                    .recreate,
                    "database \"\(name)\" was dropped but its empty replacement \"\(replacement)\" could not be renamed; run ALTER DATABASE \(quotedReplacement) RENAME TO \(quotedName), then restore again",
                    cause: error)
            }
        }
        noteLeftoverReplacements(on: maintenance)
        do {
            connection = try maintenance.connect(toDatabase: name, applicationName: options.applicationName)
        } catch {
            throw PostgresError(.recreate, "cannot connect to the recreated database \"\(name)\"", cause: error)
        }
    }

    /// Says which replacement databases an earlier `--clean` left behind: only one killed with
    /// SIGKILL between its create and its rename leaves one (another restore running now has one
    /// for a moment). They are named, never dropped here: a database snap did not create in this
    /// run is not snap's to remove.
    private func noteLeftoverReplacements(on maintenance: PostgresConnection) {
        guard
            let names = try? maintenance.query(
                "SELECT datname FROM pg_database WHERE datname ~ '^snap_restore_[0-9a-f]+_' ORDER BY datname"
            ).compactMap({ $0.first ?? nil }), !names.isEmpty
        else { return }
        let shown = names.prefix(3).map { "\"\($0)\"" }.joined(separator: ", ") + (names.count > 3 ? ", ..." : "")
        options.onNote?(
            "\(names.count == 1 ? "database" : "\(names.count) databases") \(shown) \(names.count == 1 ? "is" : "are") left from an interrupted restore --clean (or belong to one running now); drop \(names.count == 1 ? "it" : "them") once no restore runs"
        )
    }

    // MARK: Restore

    /// Restores a dump read from `read` (which fills the buffer and returns the count, 0 at the
    /// end, like `DatabaseDump.read`), then runs ANALYZE.
    ///
    /// With `jobs` 1 the bytes go straight to pg_restore's stdin. With more, they are written to a
    /// temporary file first (removed afterwards) and `restore(fromFile:)` runs. When `read` throws,
    /// pg_restore is stopped and the error is rethrown inside a `.restoreFailed` error: the target
    /// is then partly restored.
    ///
    /// `size` is the dump's size when known: a parallel restore whose temporary folder has less
    /// room than that (and a tenth more, at least 256 MiB), or is in memory (tmpfs), streams with
    /// one job instead, and says so in the summary's notes.
    public func restore(size: UInt64? = nil, reading read: (UnsafeMutableRawBufferPointer) throws -> Int) throws
        -> RestoreSummary
    {
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
                let copy = try spool(read)
                return try withExtendedLifetime(copy) { try restore(fromFile: copy.path) }
            }
        }
        let tool = try restoreTool()
        let process = try ChildProcess(
            name: "pg_restore", executable: tool.path, arguments: arguments(file: nil), environment: childEnvironment(),
            input: .stream, captureOutput: false, errorLimit: options.stderrLimit)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        do {
            while true {
                let count = try buffer.withUnsafeMutableBytes { try read($0) }
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
                .restoreFailed, "\(step); pg_restore was stopped and \(target) is partly restored", cause: error)
        }
        process.closeInput()
        try check(process.wait(), stderr: process.errorText, tool: tool)
        var summary = try finishLoad()
        summary.notes = notes
        return summary
    }

    /// What follows a load that pg_restore finished: ANALYZE, then the recreated database's
    /// connection limit (set at CREATE, a limit of 0 or below the jobs would have refused
    /// pg_restore's own sessions).
    private func finishLoad() throws -> RestoreSummary {
        let summary = try analyze()
        guard let limit = connectionLimit else { return summary }
        do {
            try connection.execute(
                "ALTER DATABASE \(connection.quoteIdentifier(connection.database)) CONNECTION LIMIT \(limit)")
        } catch {
            throw PostgresError(
                .analyze, "restored, but the connection limit \(limit) of \(target) was not set back", cause: error)
        }
        return summary
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

    /// Restores the dump in the file at `path` (pg_restore reads it itself, with `--jobs` when
    /// asked), then runs ANALYZE.
    public func restore(fromFile path: String) throws -> RestoreSummary {
        let tool = try restoreTool()
        let process = try ChildProcess(
            name: "pg_restore", executable: tool.path, arguments: arguments(file: path),
            environment: childEnvironment(),
            input: .none, captureOutput: false, errorLimit: options.stderrLimit)
        try check(process.wait(), stderr: process.errorText, tool: tool)
        var summary = try finishLoad()
        summary.jobs = max(1, options.jobs)
        return summary
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
                database: connection.database, tables: Int(row?[0] ?? "") ?? 0, rows: Int64(row?[1] ?? "") ?? 0)
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
        // A connection string with only dbname: a name containing '=' stays a name. The rest of
        // the connection comes from the environment, so no password is ever on the command line.
        var arguments = [
            "--exit-on-error", "--no-password", "--dbname=dbname=\(connection.quoteLiteral(connection.database))",
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
        var message = "pg_restore into \(target) failed (\(termination))" + (reason.map { ": \($0)" } ?? "")
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

/// The temporary copy of a dump for a parallel restore, open for as long as the value lives.
///
/// Where /proc lets pg_restore open the copy through this process's descriptor, its name is
/// removed at once: however snap ends (killed, even), the copy, a whole database, goes with it.
/// Elsewhere it keeps its private name (0600) until the value is released.
final class SpooledDump {
    private let fd: Int32
    /// What pg_restore opens: /proc/PID/fd/N, or the file's name.
    let path: String
    private let name: String?

    init(fd: Int32, name: String) {
        self.fd = fd
        let handle = "/proc/\(getpid())/fd/\(fd)"
        if access(handle, R_OK) == 0 && unlink(name) == 0 {
            path = handle
            self.name = nil
        } else {
            path = name
            self.name = name
        }
    }

    deinit {
        if let name { unlink(name) }
        close(fd)
    }
}
