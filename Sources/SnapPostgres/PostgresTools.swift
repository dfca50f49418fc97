import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A PostgreSQL client program (pg_dump, pg_restore) and its version.
public struct PostgresTool: Sendable, Equatable {
    public var name: String
    /// Absolute path of the executable.
    public var path: String
    /// The version as the tool prints it, after "(PostgreSQL) ": "15.18 (Debian 15.18-0+deb12u1)".
    public var version: String
    /// The version in server_version_num form: 150018 for 15.18.
    public var versionNumber: Int

    /// "15" for 15.18, "9.6" for 9.6.24: the part that must match the server.
    public var majorVersion: String { PostgresTools.majorVersion(versionNumber) }
}

/// Finds the client programs that fit a server.
///
/// Debian and Ubuntu install each major version's programs under `/usr/lib/postgresql/N/bin` and
/// put a wrapper on PATH that may pick any of them; a pg_dump older than the server refuses to
/// work (or, for the next major version, cannot read new catalogs), so snap picks one itself.
public enum PostgresTools {
    /// Environment variable naming a bin folder to take the programs from, overriding the search.
    public static let binFolderVariable = "SNAP_PG_BIN"
    /// Test hook: an executable run instead of pg_dump for the dump itself (the version check
    /// still uses the real pg_dump). Tests point it at a script that fails mid-stream.
    public static let testPgDumpVariable = "SNAP_TEST_PG_DUMP"
    /// Where Debian-style packages install the versioned programs.
    public static let versionedRoot = "/usr/lib/postgresql"

    /// Finds `name` (pg_dump, pg_restore) for a server of version `serverVersionNumber`.
    ///
    /// Order: `$SNAP_PG_BIN/name`; else the highest `/usr/lib/postgresql/N/bin/name` whose major
    /// version is at least the server's; else `name` on PATH. With `requireServerMajor`, a program
    /// older than the server is refused with a message naming both versions and the package that
    /// fixes it; otherwise it is accepted (pg_restore talks plain SQL to the server).
    public static func locate(
        _ name: String, serverVersionNumber: Int?, requireServerMajor: Bool,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> PostgresTool {
        let serverMajor = serverVersionNumber.map(majorKey)
        let path: String
        if let folder = environment[binFolderVariable], !folder.isEmpty {
            let candidate = folder.hasSuffix("/") ? folder + name : folder + "/" + name
            guard isExecutable(candidate) else {
                throw PostgresError(
                    .toolNotFound,
                    "\(binFolderVariable)=\(folder) has no executable \(name); point it at a PostgreSQL bin folder or unset it"
                )
            }
            path = candidate
        } else {
            let installed = installedVersions().compactMap { version -> (key: Int, path: String)? in
                let candidate = "\(versionedRoot)/\(version.folder)/bin/\(name)"
                return isExecutable(candidate) ? (version.key, candidate) : nil
            }
            if let best = installed.first(where: { serverMajor == nil || $0.key >= serverMajor! }) {
                path = best.path
            } else if let onPath = searchPath(name, environment: environment) {
                path = onPath
            } else if let any = installed.first {
                path = any.path  // too old, refused or accepted below with a clear message
            } else {
                let package = serverVersionNumber.map { "postgresql-client-\(majorVersion($0))" } ?? "postgresql-client"
                throw PostgresError(
                    .toolNotFound,
                    "\(name) not found in \(versionedRoot)/*/bin or on PATH; install \(package) or set \(binFolderVariable) to a PostgreSQL bin folder"
                )
            }
        }
        let tool = try describe(name, at: path, environment: environment)
        if requireServerMajor, let serverVersionNumber, majorKey(tool.versionNumber) < majorKey(serverVersionNumber) {
            let server = majorVersion(serverVersionNumber)
            throw PostgresError(
                .versionMismatch,
                "\(name) \(tool.version) (\(tool.path)) is older than the server (PostgreSQL \(versionString(serverVersionNumber))) and cannot dump it; install postgresql-client-\(server) or set \(binFolderVariable) to the bin folder of \(name) \(server) or newer"
            )
        }
        return tool
    }

    /// Runs `path --version` and parses "pg_dump (PostgreSQL) 15.18 (Debian ...)".
    public static func describe(_ name: String, at path: String, environment: [String: String]) throws -> PostgresTool {
        let run = try runTool(name: name, executable: path, arguments: ["--version"], environment: environment)
        let line = run.output.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        guard run.termination.succeeded, let number = parseVersionNumber(line) else {
            throw PostgresError(
                .toolNotFound,
                "\(path) --version did not print a PostgreSQL version (\(run.termination)): \(oneLine(line.isEmpty ? run.error : line))"
            )
        }
        let version = line.range(of: "(PostgreSQL) ").map { String(line[$0.upperBound...]) } ?? line
        return PostgresTool(name: name, path: path, version: version, versionNumber: number)
    }

    /// 150018 for "pg_dump (PostgreSQL) 15.18 (Debian ...)", 90624 for "9.6.24", 170000 for "17beta1".
    static func parseVersionNumber(_ text: String) -> Int? {
        let afterName = text.range(of: "(PostgreSQL) ").map { text[$0.upperBound...] } ?? text[...]
        let digitsAndDots = afterName.prefix { $0.isNumber || $0 == "." }
        let parts = digitsAndDots.split(separator: ".").compactMap { Int($0) }
        guard let first = parts.first else { return nil }
        if first >= 10 { return first * 10000 + (parts.count > 1 ? parts[1] : 0) }
        guard parts.count >= 2 else { return nil }
        return first * 10000 + parts[1] * 100 + (parts.count > 2 ? parts[2] : 0)
    }

    /// The major version in server_version_num form with the minor part cleared, for comparing.
    static func majorKey(_ number: Int) -> Int { number >= 100_000 ? number / 10000 * 10000 : number / 100 * 100 }

    /// "15" for 150018, "9.6" for 90624.
    static func majorVersion(_ number: Int) -> String {
        number >= 100_000 ? "\(number / 10000)" : "\(number / 10000).\(number / 100 % 100)"
    }

    /// "15.18" for 150018, "9.6.24" for 90624.
    static func versionString(_ number: Int) -> String {
        number >= 100_000
            ? "\(number / 10000).\(number % 10000)" : "\(number / 10000).\(number / 100 % 100).\(number % 100)"
    }

    /// The folders under /usr/lib/postgresql that look like versions, highest first.
    static func installedVersions() -> [(folder: String, key: Int)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: versionedRoot)) ?? []
        return names.compactMap { name in parseVersionNumber(name).map { (name, majorKey($0)) } }
            .sorted { $0.key > $1.key }
    }

    static func searchPath(_ name: String, environment: [String: String]) -> String? {
        let path = environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for folder in path.split(separator: ":") where !folder.isEmpty {
            let candidate = "\(folder)/\(name)"
            if isExecutable(candidate) {
                return candidate.hasPrefix("/") ? candidate : FileManager.default.currentDirectoryPath + "/" + candidate
            }
        }
        return nil
    }

    static func isExecutable(_ path: String) -> Bool {
        var status = stat()
        return access(path, X_OK) == 0 && stat(path, &status) == 0 && (status.st_mode & S_IFMT) == S_IFREG
    }
}
