import Foundation
import SnapCore

/// Settings for a dump; the defaults suit the snap command.
public struct DumpOptions {
    /// The environment the tools are looked up in and the child starts from: PATH, SNAP_PG_BIN,
    /// SNAP_TEST_PG_DUMP. Tests pass their own instead of changing the process's.
    public var environment: [String: String]
    /// application_name of our session; pg_dump's gets " pg_dump" appended, so both can be told
    /// apart in pg_stat_activity.
    public var applicationName: String
    /// How much of pg_dump's stderr to keep for the error message.
    public var stderrLimit: Int

    public init(
        environment: [String: String] = ProcessInfo.processInfo.environment, applicationName: String = "snap",
        stderrLimit: Int = 64 * 1024
    ) {
        self.environment = environment
        self.applicationName = applicationName
        self.stderrLimit = stderrLimit
    }
}

/// A running `pg_dump` of one database, for `SnapshotBuilder.run(dump:)`.
///
/// Opening a session connects, reads the WAL position, starts a `REPEATABLE READ, READ ONLY`
/// transaction, exports its snapshot and reads the other facts (size, ...) inside it, then
/// starts `pg_dump --snapshot=<id> -Fc -Z0`. pg_dump therefore dumps exactly the state the facts
/// describe, and the transaction stays open until pg_dump has ended, because an exported snapshot
/// lives only as long as the transaction that exported it. The dump is uncompressed (-Z0) so
/// that snap's chunker finds the same chunks in unchanged tables from one snapshot to the next.
///
/// pg_dump is pointed at the server through its environment (PGHOST, PGPORT, PGUSER,
/// PGDATABASE, PGPASSWORD when a password was used...), never through its arguments, which any
/// local user can read.
public final class DumpSession: DatabaseDump {
    /// Facts about the dumped state; no password and no connection string.
    /// `tableData` is filled in once the dump has been read to its end.
    public private(set) var facts: DatabaseFacts
    /// The exported snapshot pg_dump was given.
    public let snapshotID: String
    /// The pg_dump whose version was checked (the test hook may run another executable).
    public let pgDump: PostgresTool
    /// Bytes read so far.
    public private(set) var bytesRead: UInt64 = 0

    private let connection: PostgresConnection
    /// pg_dump, started at the first read: a session whose dump is reused never starts it.
    private var process: ChildProcess?
    private let startProcess: () throws -> ChildProcess
    /// pg_dump and the thread reading it share one CPU while the dump streams.
    private var pairing: CPUPairing?
    /// Follows the data blocks as they stream, for `facts.tableData`.
    private var dataIndex = DumpDataIndex()
    private let pairingEnvironment: [String: String]
    private var finished = false

    /// Connects (nil `conninfo`: libpq's environment decides, as with psql) and starts pg_dump.
    ///
    /// Throws `PostgresError` with code `.connect` when the server cannot be reached,
    /// `.versionMismatch` when the only pg_dump is older than the server, `.toolNotFound`, or
    /// `.query` when a fact cannot be read.
    public init(conninfo: String?, options: DumpOptions = DumpOptions()) throws {
        connection = try PostgresConnection(conninfo: conninfo, applicationName: options.applicationName)
        let subject = "database \"\(connection.database)\" at \(connection.displayLocation)"
        pgDump = try PostgresTools.locate(
            "pg_dump", serverVersionNumber: connection.serverVersionNumber, requireServerMajor: true,
            environment: options.environment)
        do {
            // The WAL position before the snapshot, and what was in progress when it was taken:
            // see `readFacts`.
            let walPosition = try Self.walPosition(connection)
            try connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            // The snapshot's own description (xmin:xmax:in-progress xids), read in the statement
            // that takes it: see `DatabaseFacts.transactionSnapshot`.
            let description =
                connection.serverVersionNumber >= 130_000
                ? "pg_current_snapshot()::text" : "txid_current_snapshot()::text"
            guard let row = try connection.query("SELECT pg_export_snapshot(), \(description)").first,
                let snapshot = row[0]
            else {
                throw PostgresError(.query, "pg_export_snapshot() returned NULL")
            }
            snapshotID = snapshot
            facts = try Self.readFacts(connection, pgDumpVersion: pgDump.version, walPosition: walPosition)
            facts.transactionSnapshot = row[1]
        } catch {
            throw PostgresError(.query, "cannot start a consistent dump of \(subject)", cause: error)
        }
        pairingEnvironment = options.environment
        let executable =
            options.environment[PostgresTools.testPgDumpVariable].flatMap { $0.isEmpty ? nil : $0 } ?? pgDump.path
        let arguments = ["--snapshot=\(snapshotID)", "-Fc", "-Z0", "--no-password"]
        let environment = connection.childEnvironment(
            base: options.environment, applicationName: options.applicationName + " pg_dump")
        startProcess = {
            try ChildProcess(
                name: "pg_dump", executable: executable, arguments: arguments, environment: environment,
                input: .none, captureOutput: true, errorLimit: options.stderrLimit)
        }
    }

    private func running() throws -> ChildProcess {
        if let process { return process }
        let started = try startProcess()
        process = started
        pairing = CPUPairing(child: started.pid, environment: pairingEnvironment)
        return started
    }

    /// Ends the transaction without dumping: the caller reuses an earlier dump of the same state.
    public func skip() {
        guard !finished else { return }
        finished = true
        pairing?.end()
        try? connection.execute("ROLLBACK")
        connection.close()
    }

    /// Reads up to `buffer.count` bytes of the dump; 0 at its end.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard !finished else { return 0 }
        let count: Int
        do {
            count = try running().read(into: buffer)
        } catch {
            // The caller gives up on the dump: give its thread its CPUs back now.
            pairing?.end()
            throw error
        }
        bytesRead += UInt64(count)
        dataIndex.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        return count
    }

    /// Waits for pg_dump, ends the snapshot's transaction, and throws when the dump is not whole:
    /// pg_dump exited non-zero or was killed (the message carries its stderr's reason), stopped
    /// before its output was read to the end, or wrote nothing. Calling it before the end stops
    /// pg_dump. Safe to call twice; the second call does nothing.
    public func finish() throws {
        guard !finished else { return }
        let process = try running()
        finished = true
        pairing?.end()
        pairing = nil
        let readToEnd = process.outputEnded
        let termination = process.wait()
        if readToEnd {
            _ = dataIndex.finish()
            facts.tableData = dataIndex.tableData
        }
        // The snapshot may go now; a failed rollback changes nothing about the dump.
        try? connection.execute("ROLLBACK")
        connection.close()

        let subject =
            "pg_dump of database \"\(facts.name)\" at \(PostgresConnection.location(host: facts.host ?? "", port: facts.port ?? ""))"
        let reason = failureReason(fromStderr: process.errorText)
        guard termination.succeeded else {
            throw PostgresError(
                .dumpFailed, "\(subject) failed (\(termination))" + (reason.map { ": \($0)" } ?? ""))
        }
        guard readToEnd else {
            throw PostgresError(.dumpFailed, "\(subject) was stopped before its output was read to the end")
        }
        guard bytesRead > 0 else {
            throw PostgresError(.dumpFailed, "\(subject) produced no output" + (reason.map { ": \($0)" } ?? ""))
        }
    }

    /// The WAL insert position (on a standby, the replay position), or "" when the role may not
    /// read it.
    ///
    /// Read just before the dump's snapshot is taken, never after: a transaction that commits
    /// between the snapshot and a later reading would be in the recorded position but not in the
    /// dump. Even read before, a position alone does not prove a state: a transaction whose commit
    /// record is already written may become visible only after the snapshot (a synchronous
    /// commit waiting for its flush or standby), with no WAL after it. The dump's transaction
    /// snapshot is recorded beside it for that (docs/FORMAT.md §6.2).
    static func walPosition(_ connection: PostgresConnection) throws -> String {
        let inRecovery = try connection.value("SELECT pg_is_in_recovery()") == "t"
        let modern = connection.serverVersionNumber >= 100_000
        let lsnFunction =
            switch (inRecovery, modern) {
            // The insert position, not the write position: with asynchronous commit the write
            // position can lag behind a committed change, and the reuse of an unchanged
            // database's dump relies on every change moving this position.
            case (false, true): "pg_current_wal_insert_lsn()"
            case (true, true): "pg_last_wal_replay_lsn()"
            case (false, false): "pg_current_xlog_insert_location()"
            case (true, false): "pg_last_xlog_replay_location()"
            }
        return try optionalFact(connection, function: lsnFunction, sql: "SELECT \(lsnFunction)::text")
    }

    /// Reads the facts in the dump's transaction (`walPosition` was read just before it).
    /// Functions a plain role may not run (pg_control_system) are checked first instead of
    /// failing the transaction; their fact is then left empty.
    static func readFacts(_ connection: PostgresConnection, pgDumpVersion: String, walPosition: String) throws
        -> DatabaseFacts
    {
        let rows = try connection.query(
            """
            SELECT current_setting('server_version'), current_setting('server_version_num'), current_database(),
                   pg_database_size(current_database()), pg_encoding_to_char(d.encoding), pg_is_in_recovery()
            FROM pg_database d WHERE d.datname = current_database()
            """)
        guard let row = rows.first, row.count == 6 else {
            throw PostgresError(.query, "the current database is missing from pg_database")
        }
        let inRecovery = row[5] == "t"
        let modern = connection.serverVersionNumber >= 100_000
        let systemIdentifier = try optionalFact(
            connection, function: "pg_control_system()", sql: "SELECT system_identifier::text FROM pg_control_system()")
        var facts = DatabaseFacts(
            name: row[2] ?? connection.database, host: connection.host, port: connection.port, user: connection.user,
            serverVersion: row[0] ?? connection.serverVersion,
            serverVersionNumber: Int(row[1] ?? "") ?? connection.serverVersionNumber, encoding: row[4] ?? "",
            sizeBytes: Int64(row[3] ?? "") ?? 0, inRecovery: inRecovery, walPosition: walPosition,
            systemIdentifier: systemIdentifier, pgDumpVersion: pgDumpVersion)
        // What decides whether an unchanged database's dump can be reused (see SnapshotBuilder).
        facts.unloggedTables = Int(
            try connection.value("SELECT count(*) FROM pg_class WHERE relpersistence = 'u'") ?? "")
        if modern {
            facts.sequencesDigest = try connection.value(
                """
                SELECT md5(coalesce(string_agg(format('%I.%I=%s', schemaname, sequencename, last_value), ','
                                               ORDER BY schemaname, sequencename), ''))
                FROM pg_sequences
                """)
        }
        return facts
    }

    private static func optionalFact(_ connection: PostgresConnection, function: String, sql: String) throws -> String {
        let allowed = try connection.value(
            """
            SELECT CASE WHEN to_regprocedure($1) IS NULL THEN false
                        ELSE has_function_privilege(to_regprocedure($1), 'EXECUTE') END
            """, [function])
        guard allowed == "t" else { return "" }
        return try connection.value(sql) ?? ""
    }
}
