import Foundation

/// An error from the PostgreSQL adapter: which step failed and why, in one line a user can act on.
///
/// Follows SnapCore's `code, message, cause` pattern. `message` names the step (connect, check empty,
/// recreate, pg_dump, pg_restore, analyze) and the server (host, port, database), and carries the
/// server's or the tool's own reason. It never contains a password or a full connection string:
/// callers may print `description` as is.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    /// The step that failed, stable for programs that branch on it.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// The server could not be reached, or refused the login.
        public static let connect = Code(name: "connect")
        /// A statement failed on an open connection.
        public static let query = Code(name: "query")
        /// pg_dump or pg_restore could not be found.
        public static let toolNotFound = Code(name: "tool-not-found")
        /// The client tools are too old for the server or for the dump.
        public static let versionMismatch = Code(name: "version-mismatch")
        /// A child process could not be started, or its pipes failed.
        public static let process = Code(name: "process")
        /// pg_dump failed, was killed, or wrote nothing.
        public static let dumpFailed = Code(name: "dump-failed")
        /// Reading the restore target's catalog to see whether it is empty failed.
        public static let checkEmpty = Code(name: "check-empty")
        /// The restore target already holds objects.
        public static let targetNotEmpty = Code(name: "target-not-empty")
        /// Dropping or creating the restore target failed.
        public static let recreate = Code(name: "recreate")
        /// pg_restore failed, or the dump stream feeding it did.
        public static let restoreFailed = Code(name: "restore-failed")
        /// ANALYZE or the row summary after a restore failed.
        public static let analyze = Code(name: "analyze")
        /// The dump is not an archive pg_restore can load (a plain SQL script, say).
        public static let unreadableDump = Code(name: "unreadable-dump")
        /// The roles the dump's objects belong to, or its grants name, are missing on the target
        /// server, or the restoring role may not give objects to them.
        public static let roles = Code(name: "roles")
        /// Swapping the loaded copy in for the live database (`--clean`) failed.
        public static let swap = Code(name: "swap")
    }

    public var code: Code
    public var message: String
    public var cause: (any Error)?
    /// The server's SQLSTATE when the failure came from a statement (`42P01`, say).
    public var sqlState: String?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil, sqlState: String? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
        self.sqlState = sqlState ?? (cause as? PostgresError)?.sqlState
    }

    /// The same error with `text` added to its message: what became of the data, say.
    public func adding(_ text: String) -> PostgresError {
        PostgresError(code, message + text, cause: cause, sqlState: sqlState)
    }

    /// One line: libpq's and the tools' messages span lines, which a log line or a terminal
    /// status line cannot hold.
    public var description: String {
        let full = cause.map { "\(message): \($0)" } ?? message
        return oneLine(full)
    }
}

/// Joins lines and collapses runs of white space ("ERROR:  relation" becomes "ERROR: relation").
func oneLine(_ text: String) -> String {
    var result = ""
    var pendingSpace = false
    for character in text {
        if character.isWhitespace {
            pendingSpace = !result.isEmpty
        } else {
            if pendingSpace { result.append(" ") }
            pendingSpace = false
            result.append(character)
        }
    }
    return result
}

/// The line of a tool's stderr that says why it failed.
///
/// pg_dump and pg_restore end with context lines ("Command was: ...", "detail: Query was: ...")
/// after the real reason, so the last line that reports an error wins over the last line.
func failureReason(fromStderr text: String) -> String? {
    let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        .filter { !$0.isEmpty }
    let markers = ["error:", "fatal:", "ERROR:", "FATAL:", "PANIC:"]
    let line = lines.last { line in markers.contains { line.contains($0) } } ?? lines.last
    guard var reason = line else { return nil }
    for prefix in ["pg_dump: error: ", "pg_restore: error: ", "pg_dump: ", "pg_restore: "]
    where reason.hasPrefix(prefix) {
        reason.removeFirst(prefix.count)
        break
    }
    return oneLine(reason)
}
