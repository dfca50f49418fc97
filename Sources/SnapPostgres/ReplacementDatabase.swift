import Foundation
import SnapCore

/// A session connected to a database, as `pg_stat_activity` shows it.
public struct DatabaseSession: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int
    public var user: String
    public var application: String
    /// The client's address; empty over a Unix socket.
    public var client: String

    public var description: String {
        var parts = [user.isEmpty ? "unknown user" : "user \(user)"]
        if !application.isEmpty { parts.append("application \"\(application)\"") }
        parts.append(client.isEmpty ? "local" : "from \(client)")
        return "pid \(pid) (\(parts.joined(separator: ", ")))"
    }

    /// A few sessions in one line: the first ones, and how many more.
    public static func list(_ sessions: [DatabaseSession], limit: Int = 3) -> String {
        sessions.prefix(limit).map(\.description).joined(separator: ", ")
            + (sessions.count > limit ? " and \(sessions.count - limit) more" : "")
    }
}

/// `--clean`: the new database a restore loads beside the live one, swapped in only once it is
/// complete.
///
/// Order, so that the live database is untouched until its replacement is whole: create the
/// replacement (`snap_restore_<hex>_<name>`) from template0 with the live database's encoding,
/// locale, tablespace and owner; load and analyze it (the caller); then, in one transaction,
/// rename the live database to `snap_replaced_<hex>_<name>` and the replacement to the live name;
/// then drop the replaced one. A failure or a kill at any step before that transaction commits
/// leaves the live database as it was (and at most a replacement behind, which the next `--clean`
/// names); after it, the live name holds the complete new database.
final class ReplacementDatabase {
    /// The live database's name, as the server gives it.
    let liveName: String
    /// The replacement's name.
    let name: String
    /// The live database's connection limit, set on the replacement once it is loaded (a limit
    /// at CREATE could refuse pg_restore's own sessions); nil for no limit.
    let liveConnectionLimit: Int?
    /// Where the server is, for messages.
    let location: String
    private let maintenance: PostgresConnection
    private let applicationName: String
    private let serverVersion: Int
    private var exists = true

    static let replacementPrefix = "snap_restore_"
    static let replacedPrefix = "snap_replaced_"

    /// Creates the replacement of the database `live` is connected to, keeping its encoding,
    /// collation, ctype, locale provider (and ICU rules), tablespace and owner. Works from the
    /// `postgres` maintenance database (template1 when the target is `postgres`) on the same
    /// server, as the same user.
    init(replacing live: PostgresConnection, applicationName: String) throws {
        self.applicationName = applicationName
        serverVersion = live.serverVersionNumber
        location = live.displayLocation
        let version = serverVersion
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
                let row = try live.query(
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
            throw PostgresError(
                .recreate,
                "cannot read the settings of database \"\(live.database)\" at \(location) to create its replacement",
                cause: error)
        }
        // The name the server gives, not the one asked for (a pooler may map an alias).
        liveName = settings[6] ?? live.database
        liveConnectionLimit = settings[8].flatMap { Int($0) }.flatMap { $0 == -1 ? nil : $0 }
        name = Self.derivedName(Self.replacementPrefix, liveName)

        let maintenanceName = liveName == "postgres" ? "template1" : "postgres"
        do {
            maintenance = try live.connect(toDatabase: maintenanceName, applicationName: applicationName)
        } catch {
            throw PostgresError(
                .recreate,
                "cannot connect to the maintenance database \"\(maintenanceName)\" to create the replacement of database \"\(liveName)\" at \(location)",
                cause: error)
        }
        let quote = maintenance.quoteLiteral
        var create = "CREATE DATABASE \(maintenance.quoteIdentifier(name)) TEMPLATE template0"
        if let encoding = settings[0] { create += " ENCODING \(quote(encoding))" }
        if let collate = settings[1] { create += " LC_COLLATE \(quote(collate))" }
        if let ctype = settings[2] { create += " LC_CTYPE \(quote(ctype))" }
        if version >= 150_000 {
            switch settings[4] {
            case "i":
                create += " LOCALE_PROVIDER icu"
                if let locale = settings[5] { create += " ICU_LOCALE \(quote(locale))" }
            case "b":
                create += " LOCALE_PROVIDER builtin"
                if let locale = settings[5] { create += " BUILTIN_LOCALE \(quote(locale))" }
            default:
                create += " LOCALE_PROVIDER libc"
            }
        }
        if version >= 160_000, settings[4] == "i", let rules = settings[9] {
            create += " ICU_RULES \(quote(rules))"
        }
        if let tablespace = settings[7], tablespace != "pg_default" {
            create += " TABLESPACE \(maintenance.quoteIdentifier(tablespace))"
        }
        if let owner = settings[3] { create += " OWNER \(maintenance.quoteIdentifier(owner))" }
        do {
            try maintenance.execute(create)
        } catch {
            exists = false
            throw PostgresError(
                .recreate,
                "cannot create the database that is to replace \"\(liveName)\" at \(location) (the role needs CREATEDB, and membership in the owner's role); nothing was changed",
                cause: error)
        }
        FaultInjection.step()
    }

    deinit { maintenance.close() }

    /// A connection to the replacement, for loading it.
    func connect() throws -> PostgresConnection {
        do {
            return try maintenance.connect(toDatabase: name, applicationName: applicationName)
        } catch {
            throw PostgresError(.recreate, "cannot connect to the new database \"\(name)\"", cause: error)
        }
    }

    /// The sessions on the live database (other than this one's).
    func liveSessions() throws -> [DatabaseSession] {
        try Self.sessions(on: liveName, through: maintenance)
    }

    /// Swaps the loaded replacement in: ends the sessions on the live database, renames both in
    /// one transaction, then drops the replaced database. Returns the sessions it ended. Nobody
    /// may be connected to the replacement (close the loading connection first).
    ///
    /// A session that comes back between its end and the rename makes the rename wait (the server
    /// waits up to 5 s for sessions to go) and fail; that is tried three times, then given up with
    /// the live database unchanged.
    func swap(onNote: (String) -> Void) throws -> [DatabaseSession] {
        let replaced = Self.derivedName(Self.replacedPrefix, liveName)
        let quotedLive = maintenance.quoteIdentifier(liveName)
        var ended: [DatabaseSession] = []
        var failures: [String] = []
        for attempt in 1...3 {
            for session in try liveSessions() {
                do {
                    if try maintenance.value("SELECT pg_terminate_backend($1)", [String(session.pid)]) == "t" {
                        ended.append(session)
                    }
                } catch {
                    failures.append("\(session): \((error as? PostgresError)?.cause.map { "\($0)" } ?? "\(error)")")
                }
            }
            do {
                FaultInjection.step()
                try maintenance.execute("BEGIN")
                try maintenance.execute(
                    "ALTER DATABASE \(quotedLive) RENAME TO \(maintenance.quoteIdentifier(replaced))")
                try maintenance.execute(
                    "ALTER DATABASE \(maintenance.quoteIdentifier(name)) RENAME TO \(quotedLive)")
                try maintenance.execute("COMMIT")
                break
            } catch let error as PostgresError {
                try? maintenance.execute("ROLLBACK")
                if error.sqlState == "55006" && attempt < 3 && failures.isEmpty { continue }
                let stuck =
                    failures.isEmpty ? "" : "; sessions that could not be ended: \(failures.joined(separator: "; "))"
                throw PostgresError(
                    .swap,
                    "cannot swap the restored copy in for database \"\(liveName)\" at \(location)\(stuck); stop what connects to it (the app) and restore again",
                    cause: error)
            }
        }
        exists = false
        FaultInjection.step()
        do {
            try maintenance.execute(
                "DROP DATABASE \(maintenance.quoteIdentifier(replaced))"
                    + (serverVersion >= 130_000 ? " WITH (FORCE)" : ""))
        } catch {
            onNote(
                "database \"\(liveName)\" was replaced, but its old copy could not be dropped and is kept as \"\(replaced)\" (\(error)); drop it once it is not needed"
            )
        }
        FaultInjection.step()
        return ended
    }

    /// Drops the replacement (a failed or abandoned load). Returns whether it is gone.
    @discardableResult
    func drop() -> Bool {
        guard exists else { return true }
        let force = serverVersion >= 130_000 ? " WITH (FORCE)" : ""
        exists =
            (try? maintenance.execute("DROP DATABASE IF EXISTS \(maintenance.quoteIdentifier(name))\(force)")) == nil
        return !exists
    }

    // MARK: Names and leftovers

    /// `prefix`, 8 random hex digits, `_` and as much of `live` as fits in 63 bytes
    /// (NAMEDATALEN - 1), cut on a character boundary.
    static func derivedName(_ prefix: String, _ live: String) -> String {
        var name = prefix + String(UInt32.random(in: .min ... .max), radix: 16) + "_"
        for character in live where name.utf8.count + String(character).utf8.count <= 63 { name.append(character) }
        return name
    }

    /// Says which databases earlier `--clean` runs of database `live` left: a replacement when
    /// killed before its swap (or one running now), a replaced database when killed after the
    /// swap and before the drop. Named, never dropped here: a database snap did not create in
    /// this run is not snap's to remove, and a replaced one holds the data from before that
    /// restore. (Their names end with as much of `live` as fits in 63 bytes.)
    static func noteLeftovers(of live: String, on connection: PostgresConnection, onNote: (String) -> Void) {
        guard
            let names = try? connection.query(
                """
                SELECT datname FROM (
                  SELECT datname, substring(datname from '^snap_(?:restore|replaced)_[0-9a-f]+_(.*)$') AS cut
                  FROM pg_database) leftovers
                WHERE cut <> '' AND left($1, length(cut)) = cut ORDER BY datname
                """, [live]
            ).compactMap({ $0.first ?? nil }), !names.isEmpty
        else { return }
        let shown = names.prefix(3).map { "\"\($0)\"" }.joined(separator: ", ") + (names.count > 3 ? ", ..." : "")
        let one = names.count == 1
        onNote(
            "\(one ? "database" : "\(names.count) databases") \(shown) \(one ? "is" : "are") left from an interrupted restore --clean of \"\(live)\" (or belong to one running now): \(replacementPrefix)… ones are unfinished copies, \(replacedPrefix)… ones the databases they replaced; drop \(one ? "it" : "them") once no restore runs and nothing in \(one ? "it" : "them") is needed"
        )
    }

    /// Client sessions on database `name` (other than the one asking).
    static func sessions(on name: String, through connection: PostgresConnection) throws -> [DatabaseSession] {
        let clientsOnly = connection.serverVersionNumber >= 100_000 ? "AND backend_type = 'client backend'" : ""
        return try connection.query(
            """
            SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(host(client_addr), '')
            FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() \(clientsOnly) ORDER BY pid
            """, [name]
        ).map { row in
            DatabaseSession(
                pid: Int(row[0] ?? "") ?? 0, user: row[1] ?? "", application: row[2] ?? "", client: row[3] ?? "")
        }
    }
}
