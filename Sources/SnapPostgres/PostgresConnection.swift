import CPQ
import Foundation
import SnapCore

/// One libpq connection (a `PGconn`), used synchronously.
///
/// Every call blocks in libpq: snap runs one dump or one restore at a time and gains nothing from
/// Swift concurrency here, while a blocking call keeps the transaction that pins a dump's snapshot
/// simple to reason about. A connection is not safe to share between threads.
public final class PostgresConnection {
    private var handle: OpaquePointer?

    /// Connects exactly like psql does.
    ///
    /// `conninfo` may be a database name, a `key=value` string or a `postgresql://` URI; nil (or
    /// empty) leaves everything to libpq's environment and defaults: PGHOST, PGPORT, PGUSER,
    /// PGDATABASE, PGSERVICE, PGPASSFILE, PGSSLMODE and the rest. `applicationName` is only a
    /// fallback, so an application_name the user set wins.
    public convenience init(conninfo: String?, applicationName: String = "snap") throws {
        var parameters: [(String, String)] = []
        if let conninfo, !conninfo.isEmpty {
            try Self.checkParses(conninfo)
            parameters.append(("dbname", conninfo))
        }
        parameters.append(("fallback_application_name", applicationName))
        try self.init(parameters: parameters, expandDatabaseName: true)
    }

    /// Connects with libpq keywords; with `expandDatabaseName`, the first `dbname` may be a whole
    /// connection string (libpq's `expand_dbname`).
    init(parameters: [(String, String)], expandDatabaseName: Bool) throws {
        CryptoLibrary.prepare()  // libpq's TLS would otherwise set OpenSSL up with its exit handler
        let connection = withCStringArray(parameters.map(\.0)) { keywords in
            withCStringArray(parameters.map(\.1)) { values in
                PQconnectdbParams(keywords, values, expandDatabaseName ? 1 : 0)
            }
        }
        guard let connection else {
            throw PostgresError(.connect, "cannot connect to PostgreSQL: libpq is out of memory")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let error = Self.connectionError(connection)
            PQfinish(connection)
            throw error
        }
        // Server notices ("table does not exist, skipping") would go to our stderr by default.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
        // Names and messages come back as Swift strings: ask for UTF-8 whatever the database uses.
        // Set after connecting, so it is not part of PQconninfo and never reaches pg_dump.
        _ = PQsetClientEncoding(connection, "UTF8")
        handle = connection
        host = string(PQhost(connection)) ?? ""
        port = string(PQport(connection)) ?? ""
        user = string(PQuser(connection)) ?? ""
        database = string(PQdb(connection)) ?? ""
        serverVersionNumber = Int(PQserverVersion(connection))
        serverVersion = string(PQparameterStatus(connection, "server_version")) ?? ""
    }

    deinit { close() }

    /// Ends the session now rather than when the last reference goes away.
    public func close() {
        if let handle { PQfinish(handle) }
        handle = nil
    }

    private func connection() throws -> OpaquePointer {
        guard let handle else {
            throw PostgresError(.query, "the connection to \(displayLocation) was closed")
        }
        return handle
    }

    // MARK: Where we are connected

    /// The server's host as connected: a host name, an IP address, or a socket folder.
    public let host: String
    /// The server's port as connected.
    public let port: String
    /// The role we logged in as.
    public let user: String
    /// The database we are connected to.
    public let database: String
    /// The server's version as a number: 150018 for 15.18, 90624 for 9.6.24.
    public let serverVersionNumber: Int
    /// The server's version as it reports it ("15.18 (Debian 15.18-0+deb12u1)").
    public let serverVersion: String
    /// Whether the server asked for a password and got one (from the conninfo, PGPASSWORD, or a
    /// password file).
    public var usedPassword: Bool { handle.map { PQconnectionUsedPassword($0) == 1 } ?? false }

    /// "host:port" for a TCP server, "socket DIR/.s.PGSQL.PORT" for a Unix socket: how error
    /// messages name the server.
    public var displayLocation: String { Self.location(host: host, port: port) }

    public static func location(host: String, port: String) -> String {
        if host.hasPrefix("/") || host.hasPrefix("@") { return "socket \(host)/.s.PGSQL.\(port)" }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The connection's effective parameters (PQconninfo): what was given, from the environment,
    /// or a default, by libpq keyword. The password is left out so the result can be logged.
    public var effectiveParameters: [String: String] {
        var result: [String: String] = [:]
        for option in conninfoOptions() where option.keyword != "password" {
            if let value = option.value { result[option.keyword] = value }
        }
        return result
    }

    struct ConninfoOption {
        var keyword: String
        var environmentVariable: String?
        var value: String?
        /// libpq's built-in default for the keyword.
        var compiledDefault: String?
    }

    /// PQconninfo as Swift values; the C array is freed before returning.
    func conninfoOptions() -> [ConninfoOption] {
        guard let handle, let options = PQconninfo(handle) else { return [] }
        defer { PQconninfoFree(options) }
        return Self.readOptions(options)
    }

    private static func readOptions(_ options: UnsafeMutablePointer<PQconninfoOption>) -> [ConninfoOption] {
        var result: [ConninfoOption] = []
        var option = options
        while let keyword = option.pointee.keyword {
            let value = option.pointee.val.map { String(cString: $0) }
            result.append(
                ConninfoOption(
                    keyword: String(cString: keyword),
                    environmentVariable: option.pointee.envvar.map { String(cString: $0) },
                    value: value?.isEmpty == true ? nil : value,
                    compiledDefault: option.pointee.compiled.map { String(cString: $0) }))
            option += 1
        }
        return result
    }

    /// Every environment variable libpq reads (PGHOST, PGSERVICE, PGSSLMODE, ...).
    static func libpqEnvironmentVariables() -> Set<String> {
        guard let defaults = PQconndefaults() else { return [] }
        defer { PQconninfoFree(defaults) }
        return Set(readOptions(defaults).compactMap(\.environmentVariable))
    }

    // MARK: Pointing a child process at the same server

    /// The environment for a libpq client (pg_dump, pg_restore, psql) that must reach exactly this
    /// server as this user, without a secret on its command line, where any local user could
    /// read it in `ps`.
    ///
    /// Starts from `base` without any libpq variable, then sets one variable per effective
    /// parameter. The host, its address (over TCP) and the port are the ones actually connected, so
    /// a multi-host conninfo or a name with several addresses cannot lead the child elsewhere. PGSERVICE is not passed: its values are already
    /// expanded here, and a service file would otherwise override them. Values equal to libpq's
    /// built-in defaults (sslmode=prefer, ...) are left to the child's own libpq, as psql would.
    /// PGPASSWORD is set only when
    /// the server asked for a password and this connection had one explicitly; a password from a
    /// password file stays there (PGPASSFILE is passed on).
    ///
    /// - Parameters:
    ///   - database: the database for the child; nil keeps this connection's.
    ///   - applicationName: PGAPPNAME for the child, so it can be told apart in pg_stat_activity.
    public func childEnvironment(
        base: [String: String], database: String? = nil, applicationName: String? = nil
    ) -> [String: String] {
        let libpqVariables = Self.libpqEnvironmentVariables()
        var environment = base.filter { !libpqVariables.contains($0.key) && $0.key != "PGPASSWORD" }
        // client_encoding is only there when the user set it: ours is set after connecting.
        let skipped: Set<String> = ["service", "servicefile", "password"]
        for option in conninfoOptions() {
            guard let variable = option.environmentVariable, let value = option.value else { continue }
            if skipped.contains(option.keyword) || value == option.compiledDefault { continue }
            environment[variable] = value
        }
        environment["PGHOST"] = host
        environment["PGPORT"] = port
        environment["PGUSER"] = user
        environment["PGDATABASE"] = database ?? self.database
        if let hostAddress = connectedAddress { environment["PGHOSTADDR"] = hostAddress }
        if usedPassword, let password = conninfoOptions().first(where: { $0.keyword == "password" })?.value {
            environment["PGPASSWORD"] = password
        }
        if let applicationName { environment["PGAPPNAME"] = applicationName }
        return environment
    }

    /// The IP address this connection reached over TCP (nil over a Unix socket). Children and
    /// sibling connections are pinned to it: a host name with several addresses, or one that moves
    /// in a failover, must not lead pg_dump, pg_restore or a DROP DATABASE to another server.
    private var connectedAddress: String? {
        guard let address = handle.flatMap(PQhostaddr).flatMap(string), !address.isEmpty else { return nil }
        return address
    }

    /// A new connection to another database of the same server, as the same user with the same
    /// credentials and settings: for the maintenance database when recreating a target.
    public func connect(toDatabase name: String, applicationName: String = "snap") throws -> PostgresConnection {
        var parameters: [(String, String)] = []
        for option in conninfoOptions() {
            guard let value = option.value else { continue }
            switch option.keyword {
            case "service", "servicefile", "dbname", "host", "port", "hostaddr", "user":
                continue
            default:
                parameters.append((option.keyword, value))
            }
        }
        parameters.append(("host", host))
        parameters.append(("port", port))
        parameters.append(("user", user))
        if let address = connectedAddress { parameters.append(("hostaddr", address)) }
        parameters.append(("dbname", name))
        parameters.append(("fallback_application_name", applicationName))
        return try PostgresConnection(parameters: parameters, expandDatabaseName: false)
    }

    // MARK: Statements

    /// Runs one statement and returns its rows, each a list of column values (nil for NULL), in
    /// text form. `parameters` bind to `$1`, `$2`, ...; passing values this way needs no quoting.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        let connection = try connection()
        let result = withOptionalCStringArray(parameters) { values in
            PQexecParams(connection, sql, Int32(parameters.count), nil, values, nil, nil, 0)
        }
        guard let result else {
            throw PostgresError(
                .query, "statement failed on database \"\(database)\" at \(displayLocation)",
                cause: LibpqMessage(string(PQerrorMessage(connection)) ?? "out of memory"))
        }
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK else {
            let primary = string(PQresultErrorField(result, Int32(UInt8(ascii: "M"))))
            let sqlState = string(PQresultErrorField(result, Int32(UInt8(ascii: "C"))))
            let text = primary ?? string(PQresultErrorMessage(result)) ?? string(PQresStatus(status)) ?? "unknown error"
            throw PostgresError(
                .query, "statement failed on database \"\(database)\" at \(displayLocation)",
                cause: LibpqMessage(text), sqlState: sqlState)
        }
        let rowCount = Int(PQntuples(result))
        let columnCount = Int(PQnfields(result))
        var rows: [[String?]] = []
        rows.reserveCapacity(rowCount)
        for row in 0..<rowCount {
            var values: [String?] = []
            values.reserveCapacity(columnCount)
            for column in 0..<columnCount {
                if PQgetisnull(result, Int32(row), Int32(column)) == 1 {
                    values.append(nil)
                } else {
                    values.append(String(cString: PQgetvalue(result, Int32(row), Int32(column))))
                }
            }
            rows.append(values)
        }
        return rows
    }

    /// Runs a statement whose rows, if any, do not matter.
    public func execute(_ sql: String, _ parameters: [String?] = []) throws {
        try query(sql, parameters)
    }

    /// The first column of the first row, or nil when there is no row or it is NULL.
    public func value(_ sql: String, _ parameters: [String?] = []) throws -> String? {
        try query(sql, parameters).first?.first ?? nil
    }

    /// `name` quoted as an SQL identifier ("My Table" stays "My Table", with quotes).
    public func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// `text` quoted as an SQL string literal. The server has standard_conforming_strings on since
    /// 9.1, so only quotes need doubling; an E'' literal guards backslashes on any setting.
    public func quoteLiteral(_ text: String) -> String {
        if text.contains("\\") {
            return "E'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''")
                + "'"
        }
        return "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
    }

    /// `value` quoted as a value of a libpq connection string (`dbname='it\\'s'`): in single
    /// quotes, with `\\` and `'` escaped by a backslash. Not SQL quoting, which doubles quotes.
    public static func conninfoQuoted(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }

    /// `value` as one word for a POSIX shell, for commands a message suggests (`createdb 'it'\''s'`).
    public static func shellQuoted(_ value: String) -> String {
        guard value.isEmpty || value.contains(where: { !($0.isLetter || $0.isNumber || "_-.,/=@%+:".contains($0)) })
        else { return value }
        return "'" + value.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }

    // MARK: Connection failures

    /// Whether libpq reads `conninfo` as a connection string (a URI, or `key=value` pairs: its own
    /// rule is a URI prefix or an `=`) rather than as a plain database name; `isURI` says which.
    private static func connectionStringForm(_ conninfo: String) -> (isConnectionString: Bool, isURI: Bool) {
        let isURI = conninfo.hasPrefix("postgresql://") || conninfo.hasPrefix("postgres://")
        return (isURI || conninfo.contains("="), isURI)
    }

    /// libpq's reading of a connection string: its options, or libpq's reason for refusing it.
    private static func parse(_ conninfo: String) -> Result<[ConninfoOption], LibpqMessage> {
        var message: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &message) else {
            let reason = message.map { String(cString: $0) } ?? "libpq is out of memory"
            if let message { PQfreemem(message) }
            return .failure(LibpqMessage(reason))
        }
        defer { PQconninfoFree(options) }
        return .success(readOptions(options))
    }

    /// Refuses a connection string libpq cannot parse with a message that quotes none of it: libpq's
    /// own quotes the string, or the token after a password, which may be the password itself.
    public static func checkParses(_ conninfo: String) throws {
        let form = connectionStringForm(conninfo)
        guard form.isConnectionString, case .failure(let reason) = parse(conninfo) else { return }
        // Quoted pieces of the string go; a quoted single character ("=", "]") says what is missing.
        let unquoted = connectionFailureReason(reason.description).replacing(/"([^"]*)"/) {
            $0.output.1.count < 2 ? Substring($0.output.0) : "\"…\""
        }
        throw PostgresError(
            .connect,
            "cannot parse the connection string given as \(form.isURI ? "a URI" : "key=value pairs") (\(unquoted)); check its quoting and percent-encoding"
        )
    }

    /// Whether `conninfo` itself names a database (or a service, which may): a plain name, a
    /// `dbname` key, or a URI with a path. Otherwise libpq's environment and defaults decide.
    public static func namesDatabase(_ conninfo: String) -> Bool {
        guard connectionStringForm(conninfo).isConnectionString else { return !conninfo.isEmpty }
        guard case .success(let options) = parse(conninfo) else { return false }
        return options.contains { ($0.keyword == "dbname" || $0.keyword == "service") && !($0.value ?? "").isEmpty }
    }

    /// The one-line error for a failed connection: where, which database and user, and the reason.
    private static func connectionError(_ connection: OpaquePointer) -> PostgresError {
        var options: [ConninfoOption] = []
        if let raw = PQconninfo(connection) {
            options = readOptions(raw)
            PQconninfoFree(raw)
        }
        func option(_ keyword: String) -> String? { options.first { $0.keyword == keyword }?.value }
        let host = string(PQhost(connection)) ?? option("host") ?? "the default socket"
        let port = string(PQport(connection)) ?? option("port") ?? "5432"
        let user = string(PQuser(connection)) ?? option("user") ?? ""
        let database = string(PQdb(connection)) ?? option("dbname") ?? user
        var reason = connectionFailureReason(string(PQerrorMessage(connection)) ?? "")
        if PQconnectionNeedsPassword(connection) == 1 {
            reason += "; set PGPASSWORD, add the password to the conninfo, or add it to ~/.pgpass"
        }
        // libpq quotes a connection string it cannot parse, and a mistyped URI becomes a database
        // name that the server's message repeats: the message is user-facing, so no password.
        if let password = option("password"), password.count >= 4 {
            reason = reason.replacingOccurrences(of: password, with: "***")
        }
        return PostgresError(
            .connect,
            redactingPasswords(
                "cannot connect to PostgreSQL at \(location(host: host, port: port)) (database \"\(database)\", user \"\(user)\")"
            ),
            cause: LibpqMessage(redactingPasswords(reason)))
    }

    /// `text` with what looks like a password in a connection string replaced by `***`: the
    /// `password` of `user:password@` (in a URI, or in a mistyped one) and of `password=value`.
    static func redactingPasswords(_ text: String) -> String {
        text.replacing(/:[^:@\/\s"']+@/, with: ":***@")
            .replacing(/(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s"]+)/) { $0.output.1 + "***" }
    }

    /// libpq's message without its own "connection to server at ... failed:" prefix (our message
    /// names the server already), hints joined onto one line.
    static func connectionFailureReason(_ message: String) -> String {
        let lines = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        let attempts = lines.filter { $0.hasPrefix("connection to server") }.count
        let cleaned = lines.map { line -> String in
            guard attempts <= 1, line.hasPrefix("connection to server"), let range = line.range(of: " failed: ") else {
                return line
            }
            return String(line[range.upperBound...])
        }
        // Hints ("Is the server running...?") continue the sentence after a semicolon.
        let joined = cleaned.enumerated().map { index, line in
            index == 0 ? line : line.prefix(1).lowercased() + line.dropFirst()
        }.joined(separator: "; ")
        return joined.isEmpty ? "unknown error" : joined
    }
}

/// A message from libpq or the server, shown as is.
struct LibpqMessage: Error, CustomStringConvertible, Sendable {
    var description: String
    init(_ text: String) { description = oneLine(text) }
}

private func string(_ pointer: UnsafePointer<CChar>?) -> String? {
    guard let pointer else { return nil }
    let text = String(cString: pointer)
    return text.isEmpty ? nil : text
}

private func string(_ pointer: UnsafeMutablePointer<CChar>?) -> String? {
    string(UnsafePointer(pointer))
}

/// Calls `body` with a NULL-terminated array of C strings that lives for the call only.
func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    withOptionalCStringArray(strings) { body($0) }
}

func withOptionalCStringArray<R>(_ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { $0.map { strdup($0)! } }
    defer { for item in copies { free(item) } }
    let pointers = copies.map { UnsafePointer($0) } + [nil]
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
