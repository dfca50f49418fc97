import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What a finished process printed and how it ended.
public struct ProcessResult: Sendable {
    /// The exit status, or the signal number when `signaled`.
    public var status: Int32
    public var signaled: Bool
    public var stdout: String
    public var stderr: String

    public var succeeded: Bool { !signaled && status == 0 }
}

/// A failed test helper step, with what to do about it.
public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Runs `executable` (a path, or a name looked up on PATH) to its end.
///
/// Output goes to temporary files rather than pipes, so nothing blocks on a full pipe and a
/// daemon the program leaves behind (pg_ctl's server) cannot hold a pipe open and hang us. Uses
/// posix_spawn and waitpid directly: Foundation's Process has been seen to never notice the
/// exit of a program that started a daemon. The child gets only stdin, stdout and stderr.
///
/// - Parameters:
///   - environment: the whole environment; nil inherits this process's.
///   - input: written to the process's stdin.
///   - currentDirectory: nil keeps ours.
public func runProcess(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, input: String? = nil,
    currentDirectory: String? = nil
) throws -> ProcessResult {
    let scratch = try TemporaryDirectory(prefix: "snap-run")
    let outPath = try scratch.write("stdout", "", mode: 0o600)
    let errPath = try scratch.write("stderr", "", mode: 0o600)
    let inPath = try scratch.write("stdin", input ?? "", mode: 0o600)
    let path = try resolveExecutable(executable, environment: environment)
    let pid = try spawnProcess(
        path, arguments, environment: environment ?? ProcessInfo.processInfo.environment, stdin: inPath,
        stdout: outPath, stderr: errPath, currentDirectory: currentDirectory)
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else {
            throw TestSupportError("waitpid for \(path) failed: \(String(cString: strerror(errno)))")
        }
    }
    let signaled = (status & 0x7f) != 0
    return ProcessResult(
        status: signaled ? status & 0x7f : (status >> 8) & 0xff, signaled: signaled,
        stdout: String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self),
        stderr: String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self))
}

/// Starts `path` (absolute) with exactly `environment`, its stdin, stdout and stderr opened from
/// the given files (the output ones created or truncated) and nothing else inherited, signal
/// handling reset to the defaults; with `newProcessGroup` it leads a process group of its own, so
/// that `kill(-pid, ...)` reaches its children too. Returns the child's pid.
public func spawnProcess(
    _ path: String, _ arguments: [String], environment: [String: String], stdin: String, stdout: String,
    stderr: String, currentDirectory: String? = nil, newProcessGroup: Bool = false
) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let currentDirectory {
        guard let addChdir = spawnAddChdir else { throw TestSupportError("posix_spawn cannot change directory here") }
        _ = addChdir(&actions, currentDirectory)
    }
    posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    if let addCloseFrom = spawnAddCloseFrom { _ = addCloseFrom(&actions, 3) }
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGPIPE, SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var mask = sigset_t()
    sigemptyset(&mask)
    posix_spawnattr_setsigmask(&attributes, &mask)
    var flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
    if newProcessGroup {
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= POSIX_SPAWN_SETPGROUP
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))

    let argv = [path] + arguments
    let envp = environment.map { "\($0.key)=\($0.value)" }
    var pid: pid_t = 0
    let spawned = withCStrings(argv) { argv in
        withCStrings(envp) { envp in posix_spawn(&pid, path, &actions, &attributes, argv, envp) }
    }
    guard spawned == 0 else {
        throw TestSupportError("cannot start \(path): \(String(cString: strerror(spawned)))")
    }
    return pid
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0)! } + [nil]
    defer { for item in copies { free(item) } }
    return copies.withUnsafeBufferPointer { body($0.baseAddress!) }
}

// GNU extensions of glibc 2.29 and 2.34 that Swift's Glibc module does not declare.
private typealias AddChdir =
    @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
private let spawnAddChdir: AddChdir? = dlsym(
    UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addchdir_np"
)
.map { unsafeBitCast($0, to: AddChdir.self) }
private let spawnAddCloseFrom: AddCloseFrom? = dlsym(
    UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np"
)
.map { unsafeBitCast($0, to: AddCloseFrom.self) }

/// `name` itself when it contains a slash, else the first executable `name` on PATH.
public func resolveExecutable(_ name: String, environment: [String: String]? = nil) throws -> String {
    if name.contains("/") { return name }
    let path = (environment ?? ProcessInfo.processInfo.environment)["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for folder in path.split(separator: ":") {
        let candidate = "\(folder)/\(name)"
        if access(candidate, X_OK) == 0 { return candidate }
    }
    throw TestSupportError("\(name) not found on PATH (\(path))")
}

/// A fresh folder under $TMPDIR (or /tmp), removed with everything in it when released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(prefix: String = "snap-test") throws {
        let base = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(base)/\(prefix)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestSupportError("cannot create a temporary folder in \(base): \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// The path of `name` inside the folder.
    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes `contents` to `name` with the given permission bits and returns its path.
    @discardableResult
    public func write(_ name: String, _ contents: String, mode: Int = 0o644) throws -> String {
        try write(name, Array(contents.utf8), mode: mode)
    }

    @discardableResult
    public func write(_ name: String, _ bytes: [UInt8], mode: Int = 0o644) throws -> String {
        let target = file(name)
        guard FileManager.default.createFile(atPath: target, contents: Data(bytes)) else {
            throw TestSupportError("cannot write \(target)")
        }
        guard chmod(target, mode_t(mode)) == 0 else { throw TestSupportError("cannot chmod \(target)") }
        return target
    }
}

/// Deterministic pseudo-random bytes (SplitMix64), so tests see the same data on every run.
public func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var index = 0
        while index < count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            withUnsafeBytes(of: z.littleEndian) { word in
                for byte in word where index < count {
                    raw[index] = byte
                    index += 1
                }
            }
        }
    }
    return bytes
}
