import Foundation
import SnapCore
import SnapTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// Helpers for CrashSafetyTests: scratch folders under /var/tmp, snap runs that report a signal
// death as such, child processes the tests can kill, trees to snapshot, and repository inspection
// that does not go through the command under test.

/// A storage tree as `readTree` sees it.
typealias CrashTree = [String: TreeEntry]

// MARK: Scratch folders

/// Folders to remove when the test process exits (those of fixtures shared by several tests).
private let crashCleanupPaths = Mutex<[String]>([])
private let crashCleanupRegistered = Mutex<Bool>(false)

/// A fresh folder under /var/tmp (big trees are slow under /tmp here; TMPDIR, then /tmp, when
/// /var/tmp is not writable), removed with everything in it when released, or, with
/// `keepUntilExit`, when the test process exits.
final class CrashScratch: @unchecked Sendable {
    let path: String
    private let removeOnRelease: Bool

    /// `preferring`: a folder to make it in when it is writable, instead of /var/tmp.
    init(_ prefix: String, keepUntilExit: Bool = false, preferring preferred: String = "/var/tmp") throws {
        let environmentBase = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 }
        let base = access(preferred, W_OK) == 0 ? preferred : environmentBase ?? "/tmp"
        var template = Array("\(base)/snap-crash-\(prefix)-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestSupportError("cannot create a scratch folder in \(base): \(String(cString: strerror(errno)))")
        }
        path = String(cString: made)
        removeOnRelease = !keepUntilExit
        if keepUntilExit {
            crashCleanupPaths.withLock { $0.append(path) }
            let first = crashCleanupRegistered.withLock { registered in
                defer { registered = true }
                return !registered
            }
            if first {
                atexit {
                    for path in crashCleanupPaths.withLock({ $0 }) { try? FileManager.default.removeItem(atPath: path) }
                }
            }
        }
    }

    deinit { if removeOnRelease { try? FileManager.default.removeItem(atPath: path) } }

    func file(_ name: String) -> String { path + "/" + name }
}

// MARK: Running snap

/// The environment for snap: ours, without SNAP_REPO, SNAP_STORAGE or a kill point, plus
/// `SNAP_TEST_KILL_AFTER=killAfter` when given. The files cache of a run with `--repo DIR` sits
/// beside DIR (`DIR.cache`), not in the home folder: copies of one repository share its id, and
/// runs of other tests must not find each other's cache warm.
func crashEnvironment(killAfter: Int? = nil, arguments: [String] = []) -> [String: String] {
    var environment = ProcessInfo.processInfo.environment
    for name in ["SNAP_REPO", "SNAP_STORAGE", "SNAP_TEST_KILL_AFTER"] { environment[name] = nil }
    if let killAfter { environment["SNAP_TEST_KILL_AFTER"] = String(killAfter) }
    if let flag = arguments.firstIndex(of: "--repo"), flag + 1 < arguments.count {
        environment["SNAP_CACHE_DIR"] = arguments[flag + 1] + ".cache"
    }
    return environment
}

/// How a snap run ended and what it printed.
struct CrashResult: Sendable {
    /// The exit status, or the signal number when `signaled`.
    var status: Int32
    var signaled: Bool
    var stdout: String
    var stderr: String

    var succeeded: Bool { !signaled && status == 0 }
}

/// Runs the built snap to its end. Unlike `snap(...)` (Foundation's Process, whose status for a
/// child killed by a signal is the bare signal number, 9 for SIGKILL, indistinguishable from an
/// exit status 9), this says whether the child was signaled.
func crashSnap(_ arguments: [String], killAfter: Int? = nil) throws -> CrashResult {
    let result = try runProcess(
        snapBinary, arguments, environment: crashEnvironment(killAfter: killAfter, arguments: arguments))
    return CrashResult(status: result.status, signaled: result.signaled, stdout: result.stdout, stderr: result.stderr)
}

/// Expects a run to have been killed by SIGKILL (the fault-injection hook, or the test).
func expectKilled(_ result: CrashResult, _ context: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(
        result.signaled && result.status == SIGKILL,
        "\(context): expected death by SIGKILL, got \(result.signaled ? "signal" : "exit status") \(result.status); stderr: \(result.stderr)",
        sourceLocation: sourceLocation)
}

/// Expects a run to have exited with `status`.
func expectExit(
    _ result: CrashResult, _ status: Int32, _ context: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(
        !result.signaled && result.status == status,
        "\(context): expected exit status \(status), got \(result.signaled ? "signal" : "exit status") \(result.status); stdout: \(result.stdout) stderr: \(result.stderr)",
        sourceLocation: sourceLocation)
}

/// A snap run in the background, in its own process group, that the test can kill. Output goes to
/// files. Released before it was waited for, it is killed (the whole group) and reaped, so a
/// failing test leaves no process behind.
final class CrashChild: @unchecked Sendable {
    let pid: pid_t
    let arguments: [String]
    private let outPath: String
    private let errPath: String
    private var finished: CrashResult?

    init(_ arguments: [String], killAfter: Int? = nil, outputIn folder: String) throws {
        self.arguments = arguments
        let tag = "\(UInt32.random(in: 0...UInt32.max))"
        outPath = folder + "/child-\(tag).out"
        errPath = folder + "/child-\(tag).err"
        pid = try spawnProcess(
            snapBinary, arguments, environment: crashEnvironment(killAfter: killAfter, arguments: arguments),
            stdin: "/dev/null",
            stdout: outPath, stderr: errPath, newProcessGroup: true)
    }

    deinit {
        if finished == nil {
            Glibc.kill(-pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
    }

    /// The result once the child has ended, without waiting; nil while it runs.
    func poll() -> CrashResult? {
        if let finished { return finished }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
        return record(status)
    }

    /// SIGKILL to the child's whole process group, unless it has been reaped already.
    func kill() {
        if finished == nil { Glibc.kill(-pid, SIGKILL) }
    }

    /// Waits for the child to end.
    @discardableResult
    func wait() -> CrashResult {
        if let finished { return finished }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return record(status)
    }

    private func record(_ status: Int32) -> CrashResult {
        let signaled = (status & 0x7f) != 0
        let result = CrashResult(
            status: signaled ? status & 0x7f : (status >> 8) & 0xff, signaled: signaled,
            stdout: String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self),
            stderr: String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self))
        finished = result
        return result
    }
}

/// Whether process `pid` holds a flock on `path` (read from /proc/locks), and of which kind.
func crashLockHeld(by pid: pid_t, on path: String) -> String? {
    var status = stat()
    guard stat(path, &status) == 0, let locks = try? String(contentsOfFile: "/proc/locks", encoding: .utf8) else {
        return nil
    }
    for line in locks.split(separator: "\n") {
        // "1: FLOCK  ADVISORY  READ 12345 fd:01:654321 0 EOF" (blocked waiters have a "->" field).
        let fields = line.split(separator: " ")
        guard fields.count >= 8, fields[1] == "FLOCK", fields[2] == "ADVISORY", fields[4] == "\(pid)",
            fields[5].split(separator: ":").last == "\(status.st_ino)"
        else { continue }
        return String(fields[3])
    }
    return nil
}

/// Polls until `condition` holds or `timeout` seconds have passed; returns whether it held.
func crashWaitUntil(timeout: Double, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(5_000)
    }
    return try condition()
}

/// Command lines of running processes that contain `text` (to find leftovers of a killed run).
func crashProcesses(mentioning text: String) -> [String] {
    var found: [String] = []
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = Int32(name), pid != getpid(),
            let raw = FileManager.default.contents(atPath: "/proc/\(name)/cmdline"), !raw.isEmpty
        else { continue }
        // A zombie still waiting for its parent runs nothing.
        if let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")"), stat[stat.index(close, offsetBy: 2)] == "Z"
        {
            continue
        }
        let line = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
        if line.contains(text) { found.append("\(pid): \(line)") }
    }
    return found
}

// MARK: Trees

/// Builds a storage tree at `root`: `smallFiles` small pseudo-random files (0 to 8 KiB) in nested
/// folders, with varied modes, an empty file and folder, symlinks, and one large pseudo-random file
/// per entry of `largeFiles` (its size). Every entry gets a fixed mtime (whole seconds when
/// `wholeSeconds`, as GNU tar keeps them).
func makeCrashTree(
    at root: String, seed: UInt64, smallFiles: Int = 300, largeFiles: [Int] = [], wholeSeconds: Bool = false
) throws {
    let fm = FileManager.default
    try fm.createDirectory(atPath: root + "/empty", withIntermediateDirectories: true)
    chmod(root + "/empty", 0o700)
    let pool = pseudoRandomBytes(smallFiles * 4096 + 8192, seed: seed)
    for index in 0..<smallFiles {
        let folder = "d\(index % 10)/sub\(index % 3)"
        try fm.createDirectory(atPath: root + "/" + folder, withIntermediateDirectories: true)
        let size = (index * 7919) % 8192
        let start = (index * 4096) % (pool.count - 8192)
        try writeFile(
            root + "/\(folder)/file-\(index).bin", Array(pool[start..<start + size]),
            mode: [0o644, 0o600, 0o755, 0o640][index % 4])
    }
    try writeFile(root + "/empty.txt", [])
    for (index, size) in largeFiles.enumerated() {
        try writeFile(root + "/large-\(index).bin", pseudoRandomBytes(size, seed: seed &* 1000 &+ UInt64(index)))
    }
    try fm.createDirectory(atPath: root + "/d2/sub0", withIntermediateDirectories: true)
    try fm.createSymbolicLink(atPath: root + "/link-to-d1", withDestinationPath: "d1")
    try fm.createSymbolicLink(atPath: root + "/d2/sub0/up", withDestinationPath: "../../empty.txt")
    try stampCrashTree(root, wholeSeconds: wholeSeconds, seed: seed)
}

/// Gives every entry under `root` its own fixed mtime.
func stampCrashTree(_ root: String, wholeSeconds: Bool, seed: UInt64) throws {
    let base: Int64 = 1_600_000_000_000_000_000 + Int64(seed % 1000) * 1_000_000_000_000
    var paths: [String] = ["."]
    if let walker = FileManager.default.enumerator(atPath: root) {
        while let path = walker.nextObject() as? String { paths.append(path) }
    }
    for (index, path) in paths.sorted().enumerated() {
        let offset = Int64(index) * 3_600_000_000_000 + (wholeSeconds ? 0 : Int64(index * 7919 + 1) * 12_347)
        try setTime(path == "." ? root : root + "/" + path, base + offset)
    }
}

/// Changes a tree made by `makeCrashTree`: rewrites every 15th small file, removes a few, changes
/// 64 KiB in the middle of `large-0.bin` (when there is one), adds a new large file of `newLarge`
/// bytes and a symlink, and stamps the times again.
func changeCrashTree(at root: String, seed: UInt64, newLarge: Int, wholeSeconds: Bool = false) throws {
    let fm = FileManager.default
    var index = 0
    for folder in (0..<10).map({ "d\($0)" }) {
        for sub in (0..<3).map({ "sub\($0)" }) {
            let path = root + "/" + folder + "/" + sub
            for name in ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted() where name.hasPrefix("file-") {
                index += 1
                if index % 15 == 0 {
                    try writeFile(path + "/" + name, pseudoRandomBytes(3000 + index, seed: seed &+ UInt64(index)))
                } else if index % 41 == 0 {
                    try fm.removeItem(atPath: path + "/" + name)
                }
            }
        }
    }
    let large = root + "/large-0.bin"
    if let handle = FileHandle(forUpdatingAtPath: large) {
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2)
        try handle.write(contentsOf: Data(pseudoRandomBytes(65536, seed: seed &+ 77)))
        try handle.close()
    }
    try writeFile(root + "/new-large-\(seed).bin", pseudoRandomBytes(newLarge, seed: seed &+ 99))
    try fm.createDirectory(atPath: root + "/d3", withIntermediateDirectories: true)
    try fm.createSymbolicLink(atPath: root + "/d3/new-link", withDestinationPath: "sub1")
    try stampCrashTree(root, wholeSeconds: wholeSeconds, seed: seed)
}

/// `cp -a from to`: a repository copy that keeps modes and times.
func copyCrashRepository(_ from: String, to: String) throws {
    let result = try runProcess("cp", ["-a", from, to])
    guard result.succeeded else { throw TestSupportError("cp -a \(from) \(to) failed: \(result.stderr)") }
}

// MARK: Repository inspection (read directly, not through snap's commands)

/// Paths of the temporary files in the repository folder, `snapshots/` and `objects/XX/`.
func crashLeftovers(_ repo: String) -> [String] {
    let fm = FileManager.default
    var folders = [repo, repo + "/snapshots"]
    for name in (try? fm.contentsOfDirectory(atPath: repo + "/objects")) ?? [] where name.count == 2 {
        folders.append(repo + "/objects/" + name)
    }
    var found: [String] = []
    for folder in folders {
        for name in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] where name.hasPrefix(".tmp-") {
            found.append(folder + "/" + name)
        }
    }
    return found.sorted()
}

/// The names of the objects stored (64-hex names in `objects/XX/`).
func crashStoredObjects(_ repo: String) -> Set<String> {
    let fm = FileManager.default
    var names = Set<String>()
    for folder in (try? fm.contentsOfDirectory(atPath: repo + "/objects")) ?? [] where folder.count == 2 {
        for name in (try? fm.contentsOfDirectory(atPath: repo + "/objects/" + folder)) ?? []
        where name.count == 64 && name.hasPrefix(folder) {
            names.insert(name)
        }
    }
    return names
}

/// The ids of the snapshot records (`snapshots/<id>.json`).
func crashRecordIDs(_ repo: String) -> Set<String> {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots")) ?? []
    return Set(names.filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.map { String($0.dropLast(5)) })
}

/// A record, parsed.
func crashRecord(_ repo: String, _ id: String) throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: repo + "/snapshots/" + id + ".json"))
    return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
}

/// `totals.new_objects` of a record.
func crashNewObjects(_ repo: String, _ id: String) throws -> Int {
    ((try crashRecord(repo, id))["totals"] as? [String: Any])?["new_objects"] as? Int ?? -1
}

/// Every object some record reaches: its manifest's chunks and those of every manifest entry.
func crashReferencedObjects(_ repo: String) throws -> Set<String> {
    let repository = try Repository.open(at: repo)
    let (snapshots, problems) = try repository.snapshots()
    guard problems.isEmpty else { throw TestSupportError("unreadable records: \(problems)") }
    let reader = ManifestReader(repository: repository)
    var referenced = Set<String>()
    for snapshot in snapshots {
        referenced.formUnion(snapshot.record.manifest.chunks.map(\.hex))
        try reader.forEachEntry(snapshot.record.manifest) { referenced.formUnion($0.chunks.map(\.hex)) }
    }
    return referenced
}

// MARK: Expectations

/// `snap check --read-data` finds no problem.
func expectCheckPasses(_ repo: String, _ context: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let check = try crashSnap(["--repo", repo, "check", "--read-data"])
    #expect(
        check.succeeded && check.stdout.contains("no problems found"),
        "\(context): check --read-data failed (status \(check.status)): \(check.stdout)\(check.stderr)",
        sourceLocation: sourceLocation)
}

/// Restores snapshot `id` (storage only) into a new folder and compares it with `expected`.
func expectRestoresExactly(
    _ repo: String, _ id: String, _ expected: CrashTree, in scratch: CrashScratch, _ context: String,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let target = scratch.file("restored-\(UInt32.random(in: 0...UInt32.max))")
    defer { try? FileManager.default.removeItem(atPath: target) }
    let restore = try crashSnap(["--repo", repo, "restore", id, "--no-db", "--storage-to", target])
    #expect(
        restore.succeeded, "\(context): restore of \(id.prefix(8)) failed: \(restore.stderr)",
        sourceLocation: sourceLocation)
    guard restore.succeeded else { return }
    let diff = differences(expected, try readTree(target))
    #expect(
        diff.isEmpty,
        "\(context): snapshot \(id.prefix(8)) restores differently:\n\(diff.prefix(10).joined(separator: "\n"))",
        sourceLocation: sourceLocation)
}

/// What `expectPruneCleansUp` found before pruning.
struct CrashGarbage {
    var leftovers: Int
    var unreferenced: Int
    var total: Int { leftovers + unreferenced }
}

/// Counts the leftovers and unreferenced objects, runs `snap prune --json`, and expects it to
/// have deleted exactly those: afterwards no temporary file is left and the objects stored are
/// exactly the ones the records reach.
@discardableResult
func expectPruneCleansUp(_ repo: String, _ context: String, sourceLocation: SourceLocation = #_sourceLocation)
    throws -> CrashGarbage
{
    let leftovers = crashLeftovers(repo)
    let referenced = try crashReferencedObjects(repo)
    let stored = crashStoredObjects(repo)
    let missing = referenced.subtracting(stored)
    #expect(missing.isEmpty, "\(context): objects missing before prune: \(missing.sorted().prefix(5))")
    let garbage = CrashGarbage(leftovers: leftovers.count, unreferenced: stored.subtracting(referenced).count)
    let prune = try crashSnap(["--repo", repo, "prune", "--json"])
    #expect(prune.succeeded, "\(context): prune failed: \(prune.stderr)", sourceLocation: sourceLocation)
    let report = (try? parseJSON(prune.stdout)) as? [String: Any]
    #expect(
        report?["objects_deleted"] as? Int == garbage.unreferenced
            && report?["leftovers_deleted"] as? Int == garbage.leftovers,
        "\(context): prune reported \(prune.stdout), expected \(garbage.unreferenced) objects and \(garbage.leftovers) leftovers",
        sourceLocation: sourceLocation)
    let after = crashLeftovers(repo)
    #expect(after.isEmpty, "\(context): leftovers after prune: \(after.prefix(5))", sourceLocation: sourceLocation)
    let storedAfter = crashStoredObjects(repo)
    #expect(
        storedAfter == referenced,
        "\(context): after prune \(storedAfter.subtracting(referenced).count) unreferenced object(s) remain and \(referenced.subtracting(storedAfter).count) referenced one(s) are missing",
        sourceLocation: sourceLocation)
    return garbage
}
