import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Skips where PostgreSQL is not installed, except under CI, where the suite runs and fails.
private let needsServer = Testing.ConditionTrait.enabled(
    if: TestCluster.isAvailable, Comment(rawValue: TestCluster.unavailableReason))

/// `import(export(S))` is S: whatever a snapshot can hold comes back through a classic tar.gz.
@Suite(needsServer) struct ArchiveRoundTripTests {
    let cluster: TestCluster

    init() throws { cluster = try TestCluster.start() }

    @Test func importOfAnExportIsTheSnapshotAgain() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        try makeAwkwardTree(at: storage)
        try addArchiveAwkwardness(at: storage)
        let database = try makeShopDatabase(cluster)
        #expect(try snap("--repo", repo, "init").status == 0)
        let made = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: database), "--storage", storage, "--json")
        #expect(made.status == 0, "\(made.stderr)")
        let original = try snapshotID(made.stdout)
        let dumpAtSnapshot = try cluster.pgDumpPlain(database: database)

        let export = try snap("--repo", repo, "export", original, "-o", folder.path)
        #expect(export.status == 0, "\(export.stderr)")
        let archive = export.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let imported = try snap("--repo", repo, "import", archive, "--json")
        #expect(imported.status == 0, "\(imported.stderr)")
        let copy = ((try parseJSON(imported.stdout) as? [[String: Any]])?.first?["id"] as? String) ?? "?"

        // The manifests agree entry for entry: paths, kinds, modes, times, sizes, link targets and
        // chunks (named by their SHA-256, so the same bytes). Files lose setuid and setgid on the
        // way, as in a restore (the archive names root as owner).
        let repository = try Repository.open(at: repo)
        let before = try manifest(of: original, in: repository)
        let after = try manifest(of: copy, in: repository)
        #expect(before.count == after.count && before.count > 1600)
        for (old, new) in zip(before, after) {
            var expected = old
            if expected.kind == .file { expected.mode &= ~Restorer.setIDBits }
            #expect(new == expected, "\(old.path.debugDescription)")
        }
        #expect(before.contains { $0.kind == .file && $0.mode & Restorer.setIDBits != 0 }, "the tree has setid files")

        // The dump, byte for byte.
        let dumps = try [before, after].map { entries -> String in
            let dump = try #require(entries.first { $0.kind == .database })
            let reader = StreamReader(repository: repository, chunks: dump.chunks, size: dump.size)
            let hasher = SHA256Hasher()
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
                if n == 0 { return hasher.finalize() }
                buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        }
        #expect(dumps[0] == dumps[1])

        // Both restore to the same tree, and the copy's database to the snapshot's data.
        var trees: [[[UInt8]: ExactEntry]] = []
        for (index, id) in [original, copy].enumerated() {
            let restored = folder.file("restored-\(index)")
            let restore = try snap("--repo", repo, "restore", id, "--no-db", "--storage-to", restored)
            #expect(restore.status == 0, "\(restore.stderr)")
            trees.append(try exactTree(restored))
        }
        #expect(trees[0].count == before.count - 1)
        let differing = Set(trees[0].keys).union(trees[1].keys).filter { trees[0][$0] != trees[1][$0] }
        #expect(differing.isEmpty, "\(differing.prefix(5).map { String(decoding: $0, as: UTF8.self) })")
        let target = cluster.uniqueDatabaseName("roundtrip")
        try cluster.createDatabase(target)
        let restore = try snap(
            "--repo", repo, "restore", copy, "--no-storage", "--db", cluster.conninfo(database: target))
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try cluster.pgDumpPlain(database: target) == dumpAtSnapshot)
    }

    private func manifest(of id: String, in repository: Repository) throws -> [ManifestEntry] {
        var entries: [ManifestEntry] = []
        try ManifestReader(repository: repository).forEachEntry(try repository.resolve(id).record.manifest) {
            entries.append($0)
        }
        return entries
    }
}

/// What the tar format makes hard, on top of `makeAwkwardTree`: names and link targets at the
/// ustar field limits and past them, with newlines, backslashes and other bytes tar programs
/// quote; absolute, dangling and long link targets; setuid, setgid and sticky bits, modes 0000
/// and 0777; times before 1970, at 0 and past the octal field's year 2242, with nanoseconds on
/// links too; files at the chunker's size limits; and names tar and the importer treat specially
/// (`database.dump`, `storage`, `PaxHeaders`, `GNUSparseFile.1`, `@LongLink`).
func addArchiveAwkwardness(at root: String) throws {
    let fm = FileManager.default
    let base: Int64 = 1_650_000_000_123_456_789
    func folder(_ path: String, _ mode: mode_t = 0o755) throws {
        try fm.createDirectory(atPath: root + "/" + path, withIntermediateDirectories: true)
        #expect(chmod(root + "/" + path, mode) == 0)
    }
    func file(_ path: String, _ bytes: [UInt8], _ mode: mode_t = 0o644, _ mtime: Int64 = base) throws {
        try writeFile(root + "/" + path, bytes)
        #expect(chmod(root + "/" + path, mode) == 0)
        try setExactTime(root + "/" + path, mtime)
    }
    func link(_ path: String, _ target: String, _ mtime: Int64 = base) throws {
        #expect(symlink(target, root + "/" + path) == 0)
        try setExactTime(root + "/" + path, mtime)
    }
    try folder("tar")
    try file("tar/new\nline", Array("newline".utf8))
    try file("tar/back\\slash \"quoted\" 'single'\ttab", Array("quoting".utf8))
    try file("tar/-leading dash", [])
    try file("tar/trailing space ", [1])
    try file("tar/" + String(repeating: "x", count: 100), Array("100-byte name".utf8))
    try file("tar/" + String(repeating: "y", count: 101), Array("101-byte name".utf8))
    try file("tar/" + String(repeating: "é", count: 120), Array("240-byte name".utf8))
    // A path of exactly 256 bytes that ustar can split, and one just past what it can.
    let prefix = "tar/" + String(repeating: "p", count: 150)
    try folder(prefix)
    try file(prefix + "/" + String(repeating: "q", count: 100 - "storage/".count), Array("split".utf8))
    try file(prefix + "/" + String(repeating: "r", count: 101), Array("pax".utf8))
    for name in ["database.dump", "storage", "PaxHeaders", "GNUSparseFile.1", "@LongLink"] {
        try file("tar/" + name, Array(name.utf8))
    }
    try folder("tar/storage-folder/storage")
    try file("tar/storage-folder/storage/database.dump", Array("not the dump".utf8))

    try folder("modes")
    try file("modes/none", Array("0000".utf8), 0o000)
    try file("modes/all", Array("0777".utf8), 0o777)
    try file("modes/setuid", Array("4755".utf8), 0o4755)
    try file("modes/setgid", Array("2755".utf8), 0o2755)
    try folder("modes/sticky", 0o1777)
    try folder("modes/read-only-folder", 0o555)

    try folder("times")
    try file("times/before-1970", Array("old".utf8), 0o644, -1_234_567_891)
    try file("times/long-before-1970", Array("older".utf8), 0o644, -2_000_000_000_000_000_000)
    try file("times/epoch", Array("zero".utf8), 0o644, 0)
    try file("times/after-2242", Array("future".utf8), 0o644, 8_800_000_000_987_654_321)

    try folder("links")
    try link("links/absolute", "/etc/passwd", -1_500_000_000)
    try link("links/dangling", "nowhere/at/all")
    try link("links/up-and-out", "../../../../outside")
    try link("links/long", Array(repeating: "../long-target-component", count: 40).joined(separator: "/"))
    try link("links/exactly-100", String(repeating: "t", count: 100))
    try link("links/101", String(repeating: "t", count: 101))
    try link("links/odd target", "new\nline\\back slash é")

    try folder("chunks")
    let chunker = ChunkerParameters.files
    for (name, size) in [
        ("min", chunker.minSize), ("min+1", chunker.minSize + 1), ("max", chunker.maxSize),
        ("max+1", chunker.maxSize + 1),
        ("two-max", 2 * chunker.maxSize),
    ] {
        try file("chunks/" + name, pseudoRandomBytes(size, seed: UInt64(size)))
    }
    // Folder times last (their content changed them); the read-only folder is set last of all.
    for (path, mtime) in [
        ("tar", base + 1), ("modes/sticky", base + 2), ("times", -5_000_000_001), ("links", base + 3),
        ("chunks", base + 4), ("modes", base + 5), ("modes/read-only-folder", base + 6), (".", base + 7),
    ] {
        try setExactTime(root + "/" + path, mtime)
    }
}

/// Sets a modification time in nanoseconds, before 1970 too, without following a symlink.
func setExactTime(_ path: String, _ nanoseconds: Int64) throws {
    let (seconds, nanos) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
    let spec =
        nanos < 0
        ? timespec(tv_sec: Int(seconds - 1), tv_nsec: Int(nanos + 1_000_000_000))
        : timespec(tv_sec: Int(seconds), tv_nsec: Int(nanos))
    var times = [spec, spec]
    guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else { throw CocoaError(.fileWriteUnknown) }
}

/// One entry of a tree as the kernel reports it.
struct ExactEntry: Equatable {
    var type: mode_t
    var mode: mode_t
    var mtime: Int64
    var size: Int64
    /// SHA-256 of a file's bytes.
    var content: String?
    var target: [UInt8]?
}

/// Every entry under `root` (itself as `.`), keyed by the bytes of its path: names Unicode calls
/// equal stay apart, and paths of any length are read, one folder descriptor at a time.
func exactTree(_ root: String) throws -> [[UInt8]: ExactEntry] {
    var result: [[UInt8]: ExactEntry] = [:]
    func entry(_ name: [UInt8], in folder: Int32) throws -> ExactEntry {
        let cName = name.map { CChar(bitPattern: $0) } + [0]
        var status = stat()
        guard fstatat(folder, cName, &status, AT_SYMLINK_NOFOLLOW) == 0 else { throw POSIXError(.EIO) }
        var found = ExactEntry(
            type: status.st_mode & S_IFMT, mode: status.st_mode & 0o7777,
            mtime: Int64(status.st_mtim.tv_sec) * 1_000_000_000 + Int64(status.st_mtim.tv_nsec),
            size: Int64(status.st_size))
        if found.type == S_IFLNK {
            var buffer = [CChar](repeating: 0, count: 8192)
            let n = readlinkat(folder, cName, &buffer, buffer.count)
            found.target = buffer[0..<max(n, 0)].map { UInt8(bitPattern: $0) }
            found.mode = 0  // Linux ignores a symlink's mode
            found.size = 0
        } else if found.type == S_IFREG {
            let fd = openat(folder, cName, O_RDONLY | O_NOFOLLOW)
            guard fd >= 0 else { throw POSIXError(.EIO) }
            defer { close(fd) }
            let hasher = SHA256Hasher()
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard n > 0 else { break }
                buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
            found.content = hasher.finalize()
        } else {
            found.size = 0  // a folder's size depends on the filesystem
        }
        return found
    }
    func visit(_ folder: Int32, _ prefix: [UInt8]) throws {
        guard let stream = fdopendir(dup(folder)) else { throw POSIXError(.EIO) }
        var names: [[UInt8]] = []
        while let item = readdir(stream) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name != [0x2E] && name != [0x2E, 0x2E] { names.append(name) }
        }
        closedir(stream)
        for name in names {
            let path = prefix.isEmpty ? name : prefix + [0x2F] + name
            let found = try entry(name, in: folder)
            result[path] = found
            if found.type == S_IFDIR {
                let child = openat(
                    folder, name.map { CChar(bitPattern: $0) } + [0], O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                guard child >= 0 else { throw POSIXError(.EIO) }
                defer { close(child) }
                try visit(child, path)
            }
        }
    }
    let top = open(root, O_RDONLY | O_DIRECTORY)
    guard top >= 0 else { throw POSIXError(.ENOENT) }
    defer { close(top) }
    result[[0x2E]] = try entry(Array(".".utf8), in: top)
    try visit(top, [])
    return result
}
