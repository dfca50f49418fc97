import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A throwaway PostgreSQL cluster for tests, made from the installed server programs.
///
/// `TestCluster.start()` runs initdb in a fresh temporary folder and starts the server on a Unix
/// socket in that folder and on 127.0.0.1 at a free port. It is started once per test process and
/// shared; it is stopped (`pg_ctl stop -m immediate`) and its folder removed when the process
/// exits. Tests isolate themselves by creating their own databases (`uniqueDatabaseName`).
///
/// Authentication: the Unix socket trusts everyone (the superuser `postgres` needs no password),
/// while TCP on 127.0.0.1 requires scram-sha-256. `passwordUser`/`password` is a superuser that
/// can log in over TCP, for tests of passwords and of wrong ones.
///
/// When no server programs are installed, `start()` throws. Tests use
/// `.enabled(if: TestCluster.isAvailable)`: they are skipped on a developer machine without
/// PostgreSQL, but under CI=true `isAvailable` is always true, so they run and fail loudly
/// instead of passing by skipping.
public final class TestCluster: @unchecked Sendable {
    /// The folder with initdb, pg_ctl, postgres, psql, pg_dump and pg_restore.
    public let binDirectory: String
    /// The server's major version (15).
    public let majorVersion: Int
    /// The temporary folder holding everything (data and socket folders, log).
    public let baseDirectory: String
    public let dataDirectory: String
    /// The folder of the Unix socket: the `host` for socket connections.
    public let socketDirectory: String
    /// The TCP address the server listens on.
    public let host = "127.0.0.1"
    public let port: Int
    /// The superuser initdb made; trusted on the socket.
    public let superuser = "postgres"
    /// A superuser with a password, for scram-sha-256 over TCP.
    public let passwordUser = "snap_password_user"
    public let password = "Pw-snap-test-4711"
    /// The server's log file.
    public let logFile: String

    private let runAsUser: String?
    private let stateLock = NSLock()
    private var running = false

    // MARK: Availability

    /// True when the environment says this is CI (`CI=true`).
    public static var isCI: Bool {
        let value = ProcessInfo.processInfo.environment["CI"]?.lowercased() ?? ""
        return value == "true" || value == "1" || value == "yes"
    }

    /// The bin folder of the highest installed server version, or nil.
    public static func findServerBinaries() -> (bin: String, major: Int)? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap { name -> (String, Int)? in
                let major = Int(name.split(separator: ".").first ?? "") ?? -1
                let bin = "\(root)/\(name)/bin"
                let complete = ["initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_restore"].allSatisfy {
                    access("\(bin)/\($0)", X_OK) == 0
                }
                return major >= 0 && complete ? (bin, major) : nil
            }
            .sorted { $0.1 > $1.1 }
        return versions.first.map { (bin: $0.0, major: $0.1) }
    }

    /// Whether tests that need a server should run: when the programs are installed, and always
    /// under CI (where a missing server must fail the run, not skip it).
    public static var isAvailable: Bool { isCI || findServerBinaries() != nil }

    /// Why tests were skipped, for `.enabled(if:_:)`.
    public static let unavailableReason =
        "PostgreSQL server programs not found under /usr/lib/postgresql/*/bin (apt-get install postgresql); skipping"

    // MARK: The shared cluster

    private nonisolated(unsafe) static var shared: Result<TestCluster, TestSupportError>?
    private static let sharedLock = NSLock()

    /// The process's cluster, started on first use; throws (every time) when it could not start.
    public static func start() throws -> TestCluster {
        sharedLock.lock()
        defer { sharedLock.unlock() }
        if let shared { return try shared.get() }
        let result: Result<TestCluster, TestSupportError>
        do {
            result = .success(try TestCluster(launching: ()))
            atexit { TestCluster.stopShared() }
        } catch let error as TestSupportError {
            result = .failure(error)
        } catch {
            result = .failure(TestSupportError("\(error)"))
        }
        shared = result
        return try result.get()
    }

    private static func stopShared() {
        if case .success(let cluster) = shared { cluster.stop() }
    }

    // MARK: Lifecycle

    /// Makes and starts a new cluster. Prefer the shared `start()`: each cluster costs a second or
    /// two and a few dozen MB.
    public convenience init() throws {
        try self.init(launching: ())
    }

    private init(launching: Void) throws {
        guard let found = Self.findServerBinaries() else {
            let ci =
                Self.isCI ? " CI=true, so this is a failure, not a skip: the CI script must install PostgreSQL." : ""
            throw TestSupportError(
                "no PostgreSQL server programs (initdb, pg_ctl, postgres) under /usr/lib/postgresql/*/bin; install them with apt-get install postgresql.\(ci)"
            )
        }
        binDirectory = found.bin
        majorVersion = found.major
        // PostgreSQL refuses to run as root: run the server programs as the postgres user then.
        if geteuid() == 0 {
            guard getpwnam("postgres") != nil else {
                throw TestSupportError("running as root but there is no postgres user to run the server as")
            }
            runAsUser = "postgres"
        } else {
            runAsUser = nil
        }

        let base = try Self.makeBaseDirectory()
        baseDirectory = base
        dataDirectory = base + "/data"
        socketDirectory = base + "/socket"
        logFile = base + "/server.log"
        port = try Self.freePort()
        do {
            try setUp()
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    private static func makeBaseDirectory() throws -> String {
        var template = Array("/tmp/snap-pgtest-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestSupportError("cannot create a temporary folder for the test cluster")
        }
        let path = String(cString: made)
        guard mkdir(path + "/socket", 0o755) == 0 else {
            throw TestSupportError("cannot create \(path)/socket")
        }
        chmod(path, 0o755)
        if geteuid() == 0, let user = getpwnam("postgres") {
            for folder in [path, path + "/socket"] where chown(folder, user.pointee.pw_uid, user.pointee.pw_gid) != 0 {
                throw TestSupportError("cannot hand \(folder) to the postgres user")
            }
        }
        return path
    }

    /// A TCP port nobody listens on right now: bind port 0 and ask which one we got.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0 else { throw TestSupportError("cannot bind a port on 127.0.0.1") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw TestSupportError("getsockname failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    private func setUp() throws {
        try runServerProgram(
            "initdb",
            [
                "-D", dataDirectory, "-U", superuser, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                "--no-instructions",
            ])
        let settings = """

            # snap test cluster
            listen_addresses = '127.0.0.1'
            port = \(port)
            unix_socket_directories = '\(socketDirectory)'
            fsync = off
            synchronous_commit = off
            full_page_writes = off
            max_connections = 100
            shared_buffers = 32MB
            password_encryption = 'scram-sha-256'
            log_min_messages = warning
            """
        try append(settings, to: dataDirectory + "/postgresql.conf")
        let hba = """
            # snap test cluster: trust on the socket, passwords over TCP.
            local all all trust
            host all all 127.0.0.1/32 scram-sha-256

            """
        try overwrite(hba, at: dataDirectory + "/pg_hba.conf")
        try runServerProgram("pg_ctl", ["-D", dataDirectory, "-l", logFile, "-w", "-t", "60", "-s", "start"])
        stateLock.withLock { running = true }
        _ = try psql(
            "CREATE ROLE \(passwordUser) LOGIN SUPERUSER PASSWORD '\(password)'", database: "postgres")
    }

    /// Stops the server at once (-m immediate: its data is thrown away anyway) and removes its
    /// folder. Safe to call more than once.
    public func stop() {
        let wasRunning = stateLock.withLock {
            defer { running = false }
            return running
        }
        if wasRunning {
            _ = try? runServerProgram("pg_ctl", ["-D", dataDirectory, "-m", "immediate", "-w", "-s", "stop"])
        }
        try? FileManager.default.removeItem(atPath: baseDirectory)
    }

    private func runServerProgram(_ name: String, _ arguments: [String]) throws {
        let program = "\(binDirectory)/\(name)"
        let result: ProcessResult
        if let runAsUser {
            result = try runProcess(
                "/usr/sbin/runuser", ["-u", runAsUser, "--", program] + arguments, currentDirectory: baseDirectory)
        } else {
            result = try runProcess(program, arguments, currentDirectory: baseDirectory)
        }
        guard result.succeeded else {
            let log = (try? String(contentsOfFile: logFile, encoding: .utf8)).map { "\nserver log:\n\($0)" } ?? ""
            throw TestSupportError("\(name) failed (status \(result.status)): \(result.stderr)\(result.stdout)\(log)")
        }
    }

    private func append(_ text: String, to path: String) throws {
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TestSupportError("cannot open \(path)") }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(text.utf8))
    }

    private func overwrite(_ text: String, at path: String) throws {
        // Writing in place keeps the file's owner (postgres) when we are root.
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TestSupportError("cannot open \(path)") }
        defer { try? handle.close() }
        try handle.truncate(atOffset: 0)
        try handle.write(contentsOf: Data(text.utf8))
    }

    // MARK: Connecting

    /// A libpq connection string. Without a password it goes through the Unix socket (trusted);
    /// with one, through TCP on 127.0.0.1 (scram-sha-256). `user` defaults to the superuser, or
    /// to `passwordUser` when a password is given.
    public func conninfo(database: String, user: String? = nil, password: String? = nil) -> String {
        var parts = [
            "host=\(Self.quote(password == nil ? socketDirectory : host))", "port=\(port)",
            "dbname=\(Self.quote(database))",
            "user=\(Self.quote(user ?? (password == nil ? superuser : passwordUser)))",
        ]
        if let password { parts.append("password=\(Self.quote(password))") }
        return parts.joined(separator: " ")
    }

    /// A value quoted for a libpq key=value connection string.
    public static func quote(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }

    /// The environment for a client program (psql, pg_dump) to reach the cluster as the superuser
    /// over the socket, with no other PG* variable of ours leaking in.
    public var clientEnvironment: [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PG") }
        environment["PGHOST"] = socketDirectory
        environment["PGPORT"] = String(port)
        environment["PGUSER"] = superuser
        return environment
    }

    // MARK: Helpers

    /// Runs `sql` with psql (`-X -v ON_ERROR_STOP=1 -At`) as the superuser and returns its output
    /// without the final newline; throws with psql's stderr when a statement fails. Statements
    /// run one by one, so CREATE DATABASE can follow others.
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") throws -> String {
        let result = try runProcess(
            "\(binDirectory)/psql", ["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", database, "-f", "-"],
            environment: clientEnvironment, input: sql)
        guard result.succeeded else {
            throw TestSupportError("psql on \(database) failed (status \(result.status)): \(result.stderr)")
        }
        var output = result.stdout
        if output.hasSuffix("\n") { output.removeLast() }
        return output
    }

    /// A database name no other test uses: `prefix` plus a random suffix.
    public func uniqueDatabaseName(_ prefix: String = "t") -> String {
        "\(prefix)_\(UInt32.random(in: 0...UInt32.max))"
    }

    /// CREATE DATABASE `name` (quoted) with extra `options` ("TEMPLATE template0 ENCODING LATIN1").
    public func createDatabase(_ name: String, options: String = "") throws {
        try psql("CREATE DATABASE \(Self.identifier(name)) \(options)")
    }

    /// DROP DATABASE IF EXISTS `name` WITH (FORCE).
    public func dropDatabase(_ name: String) throws {
        try psql("DROP DATABASE IF EXISTS \(Self.identifier(name)) WITH (FORCE)")
    }

    /// `name` quoted as an SQL identifier.
    public static func identifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Whether this pg_dump knows --restrict-key (15.14 and later minor releases do).
    public private(set) lazy var pgDumpHasRestrictKey: Bool = {
        let help = try? runProcess("\(binDirectory)/pg_dump", ["--help"], environment: clientEnvironment)
        return help?.stdout.contains("--restrict-key") ?? false
    }()

    /// The database as a plain SQL dump, for comparing two databases byte for byte. A fixed
    /// --restrict-key replaces the random `\restrict` key newer pg_dumps write (when supported),
    /// which would otherwise make every dump differ.
    public func pgDumpPlain(database: String) throws -> String {
        let restrict = stateLock.withLock { pgDumpHasRestrictKey } ? ["--restrict-key=snaptest"] : []
        let result = try runProcess(
            "\(binDirectory)/pg_dump", ["-Fp"] + restrict + ["-d", database], environment: clientEnvironment)
        guard result.succeeded else {
            throw TestSupportError("pg_dump of \(database) failed (status \(result.status)): \(result.stderr)")
        }
        return result.stdout
    }

    /// Runs a program from the cluster's bin folder (pg_restore, pg_dump, ...) with
    /// `clientEnvironment` and returns what it printed.
    public func runClient(_ name: String, _ arguments: [String], input: String? = nil) throws -> ProcessResult {
        try runProcess("\(binDirectory)/\(name)", arguments, environment: clientEnvironment, input: input)
    }
}
