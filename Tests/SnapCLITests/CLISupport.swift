import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The result of one run of the built `snap` binary.
struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// The `snap` executable SwiftPM built next to this test bundle.
let snapBinary: String = {
    if let override = ProcessInfo.processInfo.environment["SNAP_BINARY"] { return override }
    let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("snap").path
}()

/// Where the snap runs of this test process keep their files cache.
let testCacheFolder = NSTemporaryDirectory() + "/snap-test-cache-\(getpid())"

/// Runs a program to completion, capturing both outputs.
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], asUser user: String? = nil)
    throws -> RunResult
{
    let process = Process()
    if let user {
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
        process.arguments = ["-u", user, "--", executable] + arguments
    } else {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
    }
    var env = ProcessInfo.processInfo.environment
    env["SNAP_REPO"] = nil
    env["SNAP_STORAGE"] = nil
    // The files cache goes to a folder of this test run, not to the user's ~/.cache.
    env["SNAP_CACHE_DIR"] = testCacheFolder
    for (key, value) in environment { env[key] = value }
    process.environment = env
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Drain both pipes while the child runs so that neither fills up.
    final class Collected: @unchecked Sendable { var data = Data() }
    let errData = Collected()
    let done = DispatchSemaphore(value: 0)
    let errHandle = err.fileHandleForReading
    Thread {
        errData.data = errHandle.readDataToEndOfFile()
        done.signal()
    }.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    done.wait()
    // A child killed by a signal reports 128 + the signal, as a shell does, never a bare number.
    let signaled = process.terminationReason == .uncaughtSignal
    return RunResult(
        status: signaled ? 128 + process.terminationStatus : process.terminationStatus,
        stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData.data, as: UTF8.self))
}

@discardableResult
func snap(_ arguments: String..., environment: [String: String] = [:]) throws -> RunResult {
    try run(snapBinary, arguments, environment: environment)
}

@discardableResult
func snap(_ arguments: [String], environment: [String: String] = [:]) throws -> RunResult {
    try run(snapBinary, arguments, environment: environment)
}

/// One entry of a folder tree as the filesystem reports it, for entry-by-entry comparison.
struct TreeEntry: Equatable, CustomStringConvertible {
    var kind: String
    var mode: UInt32
    var mtime: Int64
    var size: Int64
    var content: String?  // SHA-256 of a file's bytes
    var target: String?

    var description: String {
        "\(kind) mode=\(String(mode, radix: 8)) mtime=\(mtime) size=\(size) \(content ?? target ?? "")"
    }
}

/// Walks `root` without following symlinks; keys are paths relative to root ("." is root itself).
func readTree(_ root: String) throws -> [String: TreeEntry] {
    var result: [String: TreeEntry] = [:]
    func visit(_ relative: String) throws {
        let full = relative == "." ? root : root + "/" + relative
        var st = stat()
        guard lstat(full, &st) == 0 else { throw CocoaError(.fileReadNoSuchFile) }
        let mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        let mode = UInt32(st.st_mode & 0o7777)
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            // A folder's size depends on the filesystem, not on what snap restores.
            result[relative] = TreeEntry(kind: "dir", mode: mode, mtime: mtime, size: 0)
            for name in try FileManager.default.contentsOfDirectory(atPath: full) {
                try visit(relative == "." ? name : relative + "/" + name)
            }
        case S_IFLNK:
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: full)
            // Linux ignores a symlink's mode bits; compare what matters.
            result[relative] = TreeEntry(kind: "symlink", mode: 0, mtime: mtime, size: 0, target: target)
        case S_IFREG:
            let data = try Data(contentsOf: URL(fileURLWithPath: full))
            result[relative] = TreeEntry(
                kind: "file", mode: mode, mtime: mtime, size: Int64(st.st_size),
                content: ObjectID(hashing: Array(data)).hex)
        default:
            result[relative] = TreeEntry(kind: "other", mode: mode, mtime: mtime, size: 0)
        }
    }
    try visit(".")
    return result
}

/// A readable list of differences between two trees; empty when they are identical.
func differences(_ expected: [String: TreeEntry], _ actual: [String: TreeEntry]) -> [String] {
    var lines: [String] = []
    for path in Set(expected.keys).union(actual.keys).sorted() {
        switch (expected[path], actual[path]) {
        case let (e?, a?) where e != a: lines.append("\(path): expected \(e), got \(a)")
        case (_?, nil): lines.append("\(path): missing")
        case (nil, _?): lines.append("\(path): unexpected")
        default: break
        }
    }
    return lines
}

/// Writes a file with a given mode and modification time (nanoseconds since the epoch).
func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644, mtime: Int64? = nil) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    chmod(path, mode)
    if let mtime { try setTime(path, mtime) }
}

func setTime(_ path: String, _ nanoseconds: Int64) throws {
    var times = [timespec](
        repeating: timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000)),
        count: 2)
    guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else { throw CocoaError(.fileWriteUnknown) }
}

/// Counts the objects in a repository.
func objectCount(_ repository: String) throws -> Int {
    var count = 0
    for folder in try FileManager.default.contentsOfDirectory(atPath: repository + "/objects") {
        count += try FileManager.default.contentsOfDirectory(atPath: repository + "/objects/" + folder)
            .filter { $0.count == 64 }.count
    }
    return count
}

func parseJSON(_ text: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(text.utf8))
}

/// Bind-mounts `source` at `mountPoint` (read-only with `readOnly`) for the time of `body`, then
/// unmounts it, lazily if it is still busy. Needs root.
func withBindMount<T>(_ source: String, at mountPoint: String, readOnly: Bool = false, _ body: () throws -> T)
    throws -> T
{
    let bind = try runProcess("mount", ["--bind", source, mountPoint])
    try #require(bind.succeeded, "cannot bind-mount \(source) at \(mountPoint): \(bind.stderr)")
    defer {
        if (try? runProcess("umount", [mountPoint]))?.succeeded != true {
            _ = try? runProcess("umount", ["-l", mountPoint])
        }
    }
    if readOnly {
        let remount = try runProcess("mount", ["-o", "remount,ro,bind", mountPoint])
        try #require(remount.succeeded, "cannot make \(mountPoint) read-only: \(remount.stderr)")
    }
    return try body()
}

/// Waits up to `seconds` for `condition` to hold, checking every 50 ms; returns whether it did.
func waitUntil(seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while true {
        if try condition() { return true }
        if Date() >= deadline { return false }
        usleep(50_000)
    }
}

/// The process id a child wrote into `file`, waiting up to `seconds` for it (a loaded machine
/// starts processes slowly); 0 when none came.
func pidWritten(to file: String, seconds: Double = 30) -> pid_t {
    var pid: pid_t = 0
    _ = waitUntil(seconds: seconds) {
        let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        return pid > 0
    }
    return pid
}

/// Waits up to `seconds` for process `pid` to stop: gone, or a zombie waiting for whoever
/// inherited it to reap it (PID 1 here does not reap). Kills it when it does not, so that no test
/// leaves it behind, and returns whether it stopped by itself.
func waitUntilStopped(_ pid: pid_t, seconds: Double = 10) -> Bool {
    let stopped = waitUntil(seconds: seconds) {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
        return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
    }
    if !stopped { kill(pid, SIGKILL) }
    return stopped
}
