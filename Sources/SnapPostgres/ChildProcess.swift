import CLinux
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How a child process ended.
public enum Termination: Equatable, Sendable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var succeeded: Bool { self == .exited(0) }

    public var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signaled(let signal):
            "killed by signal \(signal)" + (strsignal(signal).map { " (\(String(cString: $0)))" } ?? "")
        }
    }
}

/// A pg_dump or pg_restore child, with its stderr kept in a bounded buffer.
///
/// Started with `snap_spawn` (CLinux) rather than posix_spawn, for the one thing posix_spawn
/// cannot do: the child gets SIGKILL from the kernel when the thread that started it ends, so a
/// pg_restore never goes on loading, nor a pg_dump holding its snapshot, after snap was killed
/// with SIGKILL (the signals snap can catch reach children through `RunningChildren`). Children
/// are started from a thread that lives as long as they run (the command's own thread).
///
/// Its stdin and stderr are Unix socket pairs, created close-on-exec in one call: writing to a
/// child that is gone fails with EPIPE under MSG_NOSIGNAL instead of killing us with SIGPIPE. Its
/// stdout is a close-on-exec pipe (`pipe2` from CLinux), which is cheaper for the many small
/// writes pg_dump makes. A child writing to a closed socket or pipe gets SIGPIPE and ends.
///
/// Single-threaded on purpose: every wait for stdout and write to stdin polls stderr too, so a
/// child that writes a lot of stderr can never block while we wait for its stdout (or the other
/// way round), without a helper thread. Our pipe ends are close-on-exec, so a second child started
/// meanwhile (tests run in parallel) cannot hold them open and hide an end of file.
final class ChildProcess {
    enum Input {
        /// /dev/null.
        case none
        /// A stream we write with `write(_:)`.
        case stream
    }

    let name: String
    let pid: pid_t
    private var inputFD: Int32 = -1
    private var outputFD: Int32 = -1
    private var errorFD: Int32 = -1
    private var errorTail: [UInt8] = []
    private let errorLimit: Int
    private var termination: Termination?
    /// True once stdout reached its end.
    private(set) var outputEnded = false

    /// Starts `executable` (an absolute path) with `arguments` (without argv[0]) and exactly
    /// `environment`. stdout is a pipe for `read(into:)` when `captureOutput`, else /dev/null.
    init(
        name: String, executable: String, arguments: [String], environment: [String: String], input: Input,
        captureOutput: Bool, errorLimit: Int = 64 * 1024
    ) throws {
        self.name = name
        self.errorLimit = errorLimit
        var childEnds: [Int32] = []
        var parentEnds: [Int32] = []
        defer { for item in childEnds { Glibc.close(item) } }
        func fail(_ what: String, _ code: Int32) -> PostgresError {
            for item in parentEnds { Glibc.close(item) }
            return PostgresError(.process, "cannot start \(name): \(what)", cause: PosixError(code))
        }

        // What the child gets as descriptors 0, 1 and 2; -1 is /dev/null.
        var stdio: [Int32] = [-1, -1, -1]
        if case .stream = input {
            guard let pair = makeChannel() else { throw fail("socketpair", errno) }
            inputFD = pair.parent
            parentEnds.append(pair.parent)
            childEnds.append(pair.child)
            shutdown(pair.parent, Int32(SHUT_RD))
            stdio[0] = pair.child
        }
        if captureOutput {
            guard let pair = makeOutputPipe() else { throw fail("pipe", errno) }
            outputFD = pair.parent
            parentEnds.append(pair.parent)
            childEnds.append(pair.child)
            stdio[1] = pair.child
        }
        guard let errorPair = makeChannel() else { throw fail("socketpair", errno) }
        errorFD = errorPair.parent
        parentEnds.append(errorPair.parent)
        childEnds.append(errorPair.child)
        shutdown(errorPair.parent, Int32(SHUT_WR))
        stdio[2] = errorPair.child

        let argv = [executable] + arguments
        let envp = environment.map { "\($0.key)=\($0.value)" }.sorted()
        var childPID: pid_t = 0
        // SIGKILL when snap ends without stopping it (killed with SIGKILL itself, say): a
        // pg_restore left loading, or a pg_dump holding its snapshot, helps no one.
        let status = withMutableCStringArray(argv) { argv in
            withMutableCStringArray(envp) { envp in
                snap_spawn(&childPID, executable, argv, envp, stdio, SIGKILL)
            }
        }
        guard status == 0 else { throw fail("\(executable)", status) }
        pid = childPID
        RunningChildren.add(childPID)
    }

    deinit {
        if termination == nil {
            kill(pid, SIGTERM)
            _ = wait()
        }
        closeInput()
        closeOutput()
        if errorFD >= 0 { Glibc.close(errorFD) }
    }

    /// The last bytes (up to the limit) the child wrote to stderr, as text.
    var errorText: String { String(decoding: errorTail, as: UTF8.self) }

    /// Reads up to `buffer.count` bytes of the child's stdout; 0 at its end.
    ///
    /// Reads first and polls only when nothing is waiting: pg_dump writes 4 KiB at a time, and a
    /// poll before every read doubled the system calls. stderr is drained whenever we wait, so a
    /// child blocked on a full stderr is always noticed.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        precondition(outputFD >= 0 || outputEnded, "\(name): stdout is not captured")
        if outputEnded || buffer.count == 0 { return 0 }
        while true {
            let count = Glibc.read(outputFD, buffer.baseAddress, buffer.count)
            if count > 0 { return count }
            if count == 0 {
                outputEnded = true
                return 0
            }
            switch errno {
            case EINTR: continue
            case EAGAIN: try waitForOutput()
            default: throw PostgresError(.process, "cannot read the output of \(name)", cause: PosixError(errno))
            }
        }
    }

    /// Waits until stdout is readable (or at its end), draining stderr meanwhile.
    private func waitForOutput() throws {
        while true {
            var fds = [pollfd(fd: outputFD, events: Int16(POLLIN), revents: 0)]
            if errorFD >= 0 { fds.append(pollfd(fd: errorFD, events: Int16(POLLIN), revents: 0)) }
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 else {
                if errno == EINTR { continue }
                throw PostgresError(.process, "cannot read the output of \(name)", cause: PosixError(errno))
            }
            if fds.count > 1, fds[1].revents != 0 { drainError() }
            if fds[0].revents != 0 { return }
        }
    }

    /// Writes all of `bytes` to the child's stdin. Returns false when the child stopped reading
    /// (it exited, most likely with an error on its stderr): the caller then waits for it.
    func write(_ bytes: UnsafeRawBufferPointer) throws -> Bool {
        precondition(inputFD >= 0, "\(name): stdin is not a stream")
        var offset = 0
        while offset < bytes.count {
            var fds = [pollfd(fd: inputFD, events: Int16(POLLOUT), revents: 0)]
            if errorFD >= 0 { fds.append(pollfd(fd: errorFD, events: Int16(POLLIN), revents: 0)) }
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 else {
                if errno == EINTR { continue }
                throw PostgresError(.process, "cannot write to \(name)", cause: PosixError(errno))
            }
            if fds.count > 1, fds[1].revents != 0 { drainError() }
            guard fds[0].revents != 0 else { continue }
            let count = send(
                inputFD, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            if count < 0 {
                switch errno {
                case EINTR, EAGAIN: continue
                case EPIPE, ECONNRESET: return false
                default: throw PostgresError(.process, "cannot write to \(name)", cause: PosixError(errno))
                }
            }
            offset += count
        }
        return true
    }

    /// Closes stdin: the child sees the end of its input.
    func closeInput() {
        if inputFD >= 0 { Glibc.close(inputFD) }
        inputFD = -1
    }

    /// Closes our end of stdout: a child still writing gets SIGPIPE.
    func closeOutput() {
        if outputFD >= 0 { Glibc.close(outputFD) }
        outputFD = -1
    }

    /// Asks the child to stop (SIGTERM); `wait()` then collects it.
    func terminate() {
        if termination == nil { kill(pid, SIGTERM) }
    }

    /// Closes stdin and stdout, reads stderr to its end and reaps the child.
    @discardableResult
    func wait() -> Termination {
        if let termination { return termination }
        closeInput()
        closeOutput()
        while errorFD >= 0 { drainError() }
        // Wait without reaping, forget the pid, then reap: a pid that is reaped can be reused at
        // once, and the signal handler must never kill a stranger.
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        RunningChildren.remove(pid)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR {
                // Reaped elsewhere (a SIGCHLD handler set to SIG_IGN); nothing more to learn.
                termination = .exited(-1)
                return .exited(-1)
            }
        }
        let result: Termination = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signaled(status & 0x7f)
        termination = result
        return result
    }

    /// Reads what stderr has (blocking when it has nothing yet), keeping only the tail.
    private func drainError() {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let count = chunk.withUnsafeMutableBytes { Glibc.read(errorFD, $0.baseAddress, $0.count) }
        if count < 0 && (errno == EINTR || errno == EAGAIN) { return }
        if count <= 0 {
            Glibc.close(errorFD)
            errorFD = -1
            return
        }
        errorTail.append(contentsOf: chunk[0..<count])
        if errorTail.count > errorLimit { errorTail.removeFirst(errorTail.count - errorLimit) }
    }
}

/// The pg_dump and pg_restore children running now, so that a termination signal sent to snap
/// alone (by systemd, cron's timeout, `kill PID`) reaches them too, instead of leaving a
/// pg_restore working on unwatched.
public enum RunningChildren {
    fileprivate static let capacity = 64
    /// Read by the signal handler, so a fixed array of pids (0: free): no lock, no allocation.
    nonisolated(unsafe) fileprivate static let slots: UnsafeMutablePointer<pid_t> = {
        let slots = UnsafeMutablePointer<pid_t>.allocate(capacity: capacity)
        slots.initialize(repeating: 0, count: capacity)
        return slots
    }()
    private static let lock = Mutex<Void>(())

    static func add(_ pid: pid_t) {
        lock.withLock { _ in
            if let free = (0..<capacity).first(where: { slots[$0] == 0 }) { slots[free] = pid }
        }
    }

    static func remove(_ pid: pid_t) {
        lock.withLock { _ in
            for index in 0..<capacity where slots[index] == pid { slots[index] = 0 }
        }
    }

    /// Makes SIGTERM, SIGINT and SIGHUP go on to every running child, then end snap as they
    /// would have. A signal snap was started to ignore (`nohup`) stays ignored. Call once, at
    /// startup.
    public static func forwardTerminationSignals() {
        _ = slots  // initialized here, never first inside the handler
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        for signal in [SIGTERM, SIGINT, SIGHUP] {
            let previous = Glibc.signal(signal, forwardToChildren)
            if let previous, unsafeBitCast(previous, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) {
                Glibc.signal(signal, SIG_IGN)
                continue
            }
            sigaddset(&unblocked, signal)
        }
        // A parent may have left them blocked (threads inherit the mask): they must reach us.
        pthread_sigmask(SIG_UNBLOCK, &unblocked, nil)
    }
}

private func forwardToChildren(_ signal: Int32) {
    for index in 0..<RunningChildren.capacity {
        let pid = RunningChildren.slots[index]
        if pid > 0 { kill(pid, signal) }
    }
    Glibc.signal(signal, SIG_DFL)
    raise(signal)
}

/// An errno value with its text.
struct PosixError: Error, CustomStringConvertible, Sendable {
    var code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { String(cString: strerror(code)) }
}

/// A connected, close-on-exec socket pair: one end for us, one to hand to the child.
/// stdout is a pipe, not a socket pair: pg_dump writes its output a few KiB at a time, and each
/// write to a Unix socket allocates a buffer and wakes the reader, which cost more than chunking
/// and hashing the bytes. A 1 MiB pipe (where the kernel allows it) lets pg_dump run ahead.
private func makeOutputPipe() -> (parent: Int32, child: Int32)? {
    var ends: [Int32] = [-1, -1]
    guard pipe2(&ends, O_CLOEXEC) == 0 else { return nil }
    _ = fcntl(ends[0], F_SETPIPE_SZ, Int32(1 << 20))
    // Our end only (reads poll when it is empty); the child's stays blocking.
    _ = fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK)
    return (ends[0], ends[1])
}

private func makeChannel() -> (parent: Int32, child: Int32)? {
    var pair: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
        return nil
    }
    return (pair[0], pair[1])
}

private func withMutableCStringArray<R>(
    _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R
) -> R {
    let copies: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0)! } + [nil]
    defer { for item in copies { free(item) } }
    return copies.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// Runs a short-lived tool to its end and returns its stdout and how it ended (`--version`, say).
func runTool(name: String, executable: String, arguments: [String], environment: [String: String]) throws
    -> (output: String, error: String, termination: Termination)
{
    let process = try ChildProcess(
        name: name, executable: executable, arguments: arguments, environment: environment, input: .none,
        captureOutput: true)
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16 * 1024)
    while true {
        let count = try buffer.withUnsafeMutableBytes { try process.read(into: $0) }
        if count == 0 { break }
        output.append(contentsOf: buffer[0..<count])
    }
    let termination = process.wait()
    return (String(decoding: output, as: UTF8.self), process.errorText, termination)
}
