import Foundation
import SnapCore
import SnapPostgres

/// The optional configuration file, so that a scheduled job can be just `snap snapshot`.
///
/// Found at `$SNAP_CONFIG`, else `$XDG_CONFIG_HOME/snap/config` (`~/.config/snap/config`), else
/// `/etc/snap/config`. Lines are `key = value`; `#` starts a comment. Keys: `repo`, `db`
/// (a libpq connection string or URI) and `storage`. Precedence: a flag, then the environment
/// (`SNAP_REPO`, `SNAP_STORAGE`), then this file; the file's `db` and libpq's environment
/// combine as libpq combines a connection string with its environment.
struct ConfigFile {
    static let keys: Set<String> = ["repo", "db", "storage"]
    var path: String?
    var values: [String: String] = [:]

    /// The file in effect; a missing file is an empty configuration, a malformed one an error.
    static func load(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ConfigFile {
        let explicit = environment["SNAP_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let home = environment["HOME"].map { $0 + "/.config" }
        let candidates =
            explicit.map { [$0] }
            ?? [environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? home, "/etc"]
            .compactMap { $0.map { $0 + "/snap/config" } }
        for candidate in candidates {
            guard let data = FileManager.default.contents(atPath: candidate) else {
                if explicit != nil {
                    throw SnapError(
                        .invalidInput, "config file \(candidate) (SNAP_CONFIG) cannot be read; fix the path")
                }
                continue
            }
            return try parse(String(decoding: data, as: UTF8.self), path: candidate)
        }
        return ConfigFile()
    }

    static func parse(_ text: String, path: String) throws -> ConfigFile {
        var config = ConfigFile(path: path)
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            let parts = trimmed.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, keys.contains(parts[0]), !parts[1].isEmpty else {
                throw SnapError(
                    .invalidInput,
                    "\(path):\(number + 1): expected `key = value` with key repo, db or storage; fix or remove the line"
                )
            }
            var value = parts[1]
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                value = String(value.dropFirst().dropLast())
            }
            config.values[parts[0]] = value
        }
        return config
    }

    /// The connection string `snap snapshot` dumps with: `flag`, else the file's `db`, else nil
    /// (libpq's environment alone). libpq combines it with its environment as it always does: a
    /// key the string names wins, the environment fills in the rest (PGHOST exported beside
    /// `db = dbname=app` dumps app on that host).
    func database(flag: String?) -> String? {
        flag ?? values["db"]
    }
}

/// Refuses a dump that names no database: libpq would then take the user's name (often
/// `postgres`), and snap would back up the wrong database and say all went well. A database is
/// named by the connection string (a plain name, `dbname=`, a URI path, or a service, which
/// may), by PGDATABASE, or by PGSERVICE.
func requireNamedDatabase(
    _ conninfo: String?, environment: [String: String] = ProcessInfo.processInfo.environment
) throws {
    if let conninfo {
        // A string libpq cannot parse gets libpq's own reason first.
        try PostgresConnection.checkParses(conninfo)
        if PostgresConnection.namesDatabase(conninfo) { return }
    }
    if ["PGDATABASE", "PGSERVICE"].contains(where: { !(environment[$0] ?? "").isEmpty }) { return }
    throw CommandFailure(
        message:
            "no database is named, and libpq would dump its default (the user's name): pass --db \"dbname=NAME\" (or set PGDATABASE, or `db = dbname=NAME` in the config file), or --no-db for files only",
        status: ExitStatus.usage)
}
