import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

/// Takes plain-approach backups (`backup_YYYYMMDD_HHMMSS.tar.gz` holding `database.dump` and/or
/// `storage/`, at the top or under one top folder) into the repository as snapshots.
///
/// A snapshot records what `tar -xzf` of the archive would create, or nothing: the reader
/// (`TarReader`) refuses what tar programs read differently, and the importer refuses what GNU
/// tar would not extract as a plain tree (an absolute path or `..`, an entry written through a
/// symlink, a hard link to anything but an earlier file, devices and FIFOs, a name or link
/// target that is not UTF-8, a duplicate of a link GNU tar makes only at the end). A symlink's
/// target is data, stored as it is, as `snap snapshot` stores it: the restore never follows it.
///
/// The archive streams through once: file contents and the dump are chunked and stored as they
/// arrive (so they deduplicate against everything stored before), while the entries' metadata is
/// kept in a tree (`ArchiveTree`) until the end and written in manifest order. Memory and time
/// are linear in the archive, plus the manifest, whose lines carry full paths. A damaged archive
/// or pg_dump header stops the import with one line naming it, before any record is written;
/// chunks it already stored are reclaimed by prune.
public final class BackupImporter {
    let repository: Repository
    let program: String

    public init(repository: Repository, program: String) {
        self.repository = repository
        self.program = program
    }

    /// The archives to import for `path`: the file itself, or every `.tar.gz`/`.tgz` in a folder,
    /// oldest first (by the time in the name, else the file's mtime).
    public static func archives(at path: String) throws -> [String] {
        var status = stat()
        guard stat(path, &status) == 0 else {
            throw SnapError(.invalidInput, "\(path) does not exist; name a backup_*.tar.gz file or a folder of them")
        }
        guard status.st_mode & S_IFMT == S_IFDIR else { return [path] }
        guard let folder = opendir(path) else {
            throw SnapError(.io, "cannot list \(path)", cause: Errno(errno))
        }
        defer { closedir(folder) }
        var found: [(time: Int64, path: String)] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard name.hasSuffix(".tar.gz") || name.hasSuffix(".tgz"), !name.hasPrefix(".") else { continue }
            let full = path.hasSuffix("/") ? path + name : path + "/" + name
            var fileStatus = stat()
            guard stat(full, &fileStatus) == 0, fileStatus.st_mode & S_IFMT == S_IFREG else { continue }
            let time = timeFromName(name)?.nanoseconds ?? Int64(fileStatus.st_mtim.tv_sec) * 1_000_000_000
            found.append((time, full))
        }
        return found.sorted { ($0.time, $0.path) < ($1.time, $1.path) }.map(\.path)
    }

    /// The time in a `backup_YYYYMMDD_HHMMSS` name, read as UTC.
    public static func timeFromName(_ name: String) -> Timestamp? {
        let base = name.split(separator: "/").last.map(String.init) ?? name
        guard let range = base.range(of: "backup_") else { return nil }
        let digits = Array(base[range.upperBound...].prefix(15))
        guard digits.count == 15, digits[8] == "_",
            digits.enumerated().allSatisfy({ $0.offset == 8 || $0.element.isASCII && $0.element.isNumber })
        else { return nil }
        let text = String(digits)
        let iso =
            "\(text.prefix(4))-\(text.dropFirst(4).prefix(2))-\(text.dropFirst(6).prefix(2))T\(text.dropFirst(9).prefix(2)):\(text.dropFirst(11).prefix(2)):\(text.dropFirst(13).prefix(2))Z"
        return Timestamp(iso8601: iso)
    }

    /// The snapshot this archive was imported as before, if any (same file name, size and hash).
    public func previousImport(of path: String) throws -> Snapshot? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let candidates = try repository.snapshots().snapshots.filter {
            $0.record.sources.imported?.file == name && $0.record.sources.imported?.size == UInt64(status.st_size)
        }
        guard !candidates.isEmpty else { return nil }
        let hash = try InputFile(path).sha256()
        return candidates.first { $0.record.sources.imported?.sha256 == hash }
    }

    /// Imports one archive as a snapshot tagged `imported` (plus `tags`).
    public func importArchive(_ path: String, tags: [String] = []) throws -> Snapshot {
        let input = try InputFile(path)
        let hasher = SHA256Hasher()
        let gzip = GzipReader { buffer in
            let count = try input.read(into: buffer)
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            return count
        }
        let tar = TarReader { try gzip.read(into: $0) }
        let writer = try SnapshotWriter(repository: repository)
        var layout = Layout()
        var database: ManifestEntry?
        var dumpHeader: DumpHeader?
        let tree = ArchiveTree()
        var newest: Int64 = 0

        func refuse(_ entryPath: String, _ why: String) -> SnapError {
            refusal(Tar.shown(Array(entryPath.utf8)), why, .unsafePath)
        }
        func refusal(_ shownPath: String, _ why: String, _ code: SnapError.Code) -> SnapError {
            SnapError(code, "refusing to import \(path): entry '\(shownPath)' \(why); nothing was recorded")
        }
        /// A damaged or crafted archive: the reader's message, naming the archive.
        func reading<Value>(_ body: () throws -> Value) throws -> Value {
            do {
                return try body()
            } catch let error as SnapError where error.code == .corrupt {
                throw SnapError(
                    .corrupt, "cannot import \(path): \(error.message); nothing was recorded", cause: error.cause)
            }
        }

        while let entry = try reading({ try tar.next() }) {
            // A snapshot holds UTF-8 names only (docs/FORMAT.md, 7.3); decoding other bytes would
            // alter the name, and two such names could become one. The importer records no
            // per-entry errors, so the archive is refused rather than imported without the entry.
            guard String(validating: entry.rawPath, as: UTF8.self) != nil else {
                throw refusal(
                    Tar.shown(entry.rawPath),
                    "has a name that is not valid UTF-8, which a snapshot cannot hold; rename it to UTF-8 (convmv -f latin1 -t utf8, say) in an unpacked copy and pack the archive again",
                    .invalidInput)
            }
            if let raw = entry.rawLinkTarget, String(validating: raw, as: UTF8.self) == nil {
                throw refusal(
                    Tar.shown(entry.rawPath),
                    "is a link to '\(Tar.shown(raw))', which is not valid UTF-8 and a snapshot cannot hold; point it at a UTF-8 name in an unpacked copy and pack the archive again",
                    .invalidInput)
            }
            newest = max(newest, entry.mtime)
            guard let place = try layout.place(entry.path, isDirectory: entry.kind == .directory, refuse: refuse) else {
                continue  // the top folder itself
            }
            switch place {
            case .database:
                guard entry.kind == .file else { throw refuse(entry.path, "is not a regular file") }
                var header = DumpHeaderReader()
                let stream = try writer.storeStream(.database) { buffer in
                    let count = try reading { try tar.readContent(into: buffer) }
                    header.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                    return count
                }
                do {
                    dumpHeader = try header.result()
                } catch let damage as DumpHeader.Damage {
                    throw refusal(
                        Tar.shown(entry.rawPath),
                        "starts as a pg_dump custom-format archive, but \(damage.why), so pg_restore could not restore it; take the dump again with pg_dump -Fc, or pack the archive without it",
                        .corrupt)
                }
                database = ManifestEntry(
                    kind: .database, path: "database.dump", mode: entry.mode, mtime: entry.mtime, size: stream.size,
                    chunks: stream.chunks)
            case .storage(let components):
                guard !components.isEmpty || entry.kind == .directory else {
                    throw refuse(entry.path, "is not a folder, but the storage folder belongs there")
                }
                let manifestEntry: ManifestEntry
                switch entry.kind {
                case .directory:
                    manifestEntry = ManifestEntry(kind: .directory, path: "", mode: entry.mode, mtime: entry.mtime)
                case .file:
                    let stream = try writer.storeStream(.files) { buffer in
                        try reading { try tar.readContent(into: buffer) }
                    }
                    manifestEntry = ManifestEntry(
                        kind: .file, path: "", mode: entry.mode, mtime: entry.mtime, size: stream.size,
                        chunks: stream.chunks)
                case .symlink:
                    // The target is data, kept as it is; only an empty one no file system holds.
                    let target = entry.linkTarget ?? ""
                    guard !target.isEmpty else {
                        throw refuse(
                            entry.path,
                            "is a symlink with an empty target, which no file system holds; remove it in an unpacked copy and pack the archive again"
                        )
                    }
                    manifestEntry = ManifestEntry(
                        kind: .symlink, path: "", mode: entry.mode, mtime: entry.mtime, target: target)
                case .hardlink:
                    // A hard link to a file earlier in the archive becomes a copy of it, as it is
                    // now: GNU tar replaces a file listed again, leaving the link with the old one.
                    let target = entry.linkTarget ?? ""
                    guard
                        case .storage(let targetComponents)? = try? layout.place(
                            target, isDirectory: false, refuse: refuse),
                        let original = tree.find(targetComponents)?.entry, original.kind == .file
                    else {
                        throw refuse(
                            entry.path,
                            "is a hard link to '\(Tar.shown(Array(target.utf8)))', which is not a file earlier in storage/"
                        )
                    }
                    manifestEntry = ManifestEntry(
                        kind: .file, path: "", mode: original.mode, mtime: original.mtime, size: original.size,
                        chunks: original.chunks)
                case .other(let type):
                    throw refuse(entry.path, Self.unsupported(type))
                }
                try tree.set(manifestEntry, at: components) { previous in
                    refuse(
                        entry.path,
                        "comes after a symlink to '\(Tar.shown(Array((previous.target ?? "").utf8)))' at the same path; GNU tar makes such a link (absolute, or with '..') only at the end of the extraction, so which of the two it leaves depends on the file system; extract the archive with GNU tar and pack it again"
                    )
                }
            }
        }
        guard database != nil || !tree.isEmpty else {
            throw SnapError(
                .invalidInput,
                "refusing to import \(path): it holds neither database.dump nor storage/, so it is not a plain-approach backup (or it is empty); name archives that hold database.dump and/or storage/; nothing was recorded"
            )
        }

        // The tree goes into a part of its own, as `snap snapshot` does, so that the manifest of an
        // exported snapshot imported again is chunked alike and stores nothing new.
        if let database { try writer.append(database) }
        let treePart = writer.makePart()
        if !tree.isEmpty {
            try tree.write(to: treePart, implicitFolderTime: newest) { child, parent, kind in
                refuse(
                    "storage/" + child, "lies below '\(parent)', which is a \(kind.rawValue), not a folder")
            }
        }
        let time = Self.timeFromName(path) ?? Timestamp(nanoseconds: newest)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let origin = SnapshotRecord.ImportOrigin(
            file: name, size: input.bytesRead, sha256: hasher.finalize(),
            compressedDump: dumpHeader?.compressed ?? false)
        let facts = database.map { _ in dumpHeader?.facts ?? DumpHeader.unknownFacts }
        return try writer.commit(
            time: time, host: SnapshotOptions.localHost, tags: ["imported"] + tags, program: program,
            sources: .init(storage: tree.isEmpty ? nil : "\(name):storage/", database: facts, imported: origin),
            errors: [], parts: [treePart])
    }

    /// Why an entry of tar type `type` (other than file, folder and links) is refused.
    static func unsupported(_ type: Character) -> String {
        switch type {
        case "3", "4", "6":
            "is a device node or FIFO (tar type '\(type)'), which a snapshot cannot hold"
        case "D":
            "is a folder of a GNU incremental archive (tar -g, type 'D'), which holds only what changed; extract the archive series with tar -G and pack the result with tar -czf"
        case "M":
            "continues a file from another volume of a multi-volume archive (type 'M'); join the volumes with tar -M and pack them as one archive"
        default:
            "has tar type '\(type)', which GNU tar does not know (it would extract it as a plain file, with a warning); extract the archive and pack it again with tar -czf"
        }
    }
}

/// The storage tree an archive builds, one node per path: an entry listed twice replaces the
/// earlier one, as tar extracts it, and a folder the archive leaves implicit costs one node, not a
/// copy of its path. Written out depth first with names sorted by bytes, it is in manifest order.
final class ArchiveTree {
    struct Node {
        var name: [UInt8]
        var children: [[UInt8]: Int] = [:]
        /// The entry at this path (its `path` filled in when written); nil for an implicit folder.
        var entry: ManifestEntry?
    }

    private var nodes = [Node(name: [])]

    /// Whether nothing lies in storage/, not even the folder itself.
    var isEmpty: Bool { nodes.count == 1 && nodes[0].entry == nil }

    /// The node at `components` (relative to storage/), if the archive has made it.
    func find(_ components: [[UInt8]]) -> Node? {
        var index = 0
        for component in components {
            guard let child = nodes[index].children[component] else { return nil }
            index = child
        }
        return nodes[index]
    }

    /// Puts `entry` at `components`, making the folders above it. Throws `delayed(previous)` when
    /// a symlink that GNU tar creates only at the end of the extraction (absolute, or with a `..`
    /// component) is there already.
    func set(_ entry: ManifestEntry, at components: [[UInt8]], delayed: (ManifestEntry) -> SnapError) throws {
        var index = 0
        for component in components {
            if let child = nodes[index].children[component] {
                index = child
            } else {
                nodes.append(Node(name: component))
                nodes[index].children[component] = nodes.count - 1
                index = nodes.count - 1
            }
        }
        if let previous = nodes[index].entry, previous.kind == .symlink {
            let target = Array((previous.target ?? "").utf8)
            if target.first == PathBytes.slash || PathBytes.components(target).contains(PathBytes.dotdot) {
                throw delayed(previous)
            }
        }
        nodes[index].entry = entry
    }

    /// Appends every entry in manifest order, folders the archive left implicit as 0755 with
    /// `implicitFolderTime`. An entry below something that is not a folder (a file, or a symlink
    /// the kernel would follow) is refused through `below(child, parent, kind)`, paths relative to
    /// storage/. Iterative, so depth costs heap, not stack; each path is built once, from its
    /// parent's.
    func write(
        to writer: SnapshotWriter, implicitFolderTime: Int64,
        below: (String, String, ManifestEntry.Kind) -> SnapError
    ) throws {
        func entry(_ index: Int, _ path: String) -> ManifestEntry {
            var entry =
                nodes[index].entry ?? ManifestEntry(kind: .directory, path: "", mode: 0o755, mtime: implicitFolderTime)
            entry.path = path
            return entry
        }
        func sortedChildren(_ index: Int) -> [Int] {
            nodes[index].children.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map(\.value)
        }
        let root = entry(0, ".")
        guard root.kind == .directory else { throw below(".", ".", root.kind) }
        try writer.append(root)
        var path: [UInt8] = []
        // Each frame: a folder's children in order, the next one to write, and the length of the
        // folder's path (0 for storage/ itself).
        var stack: [(children: [Int], next: Int, length: Int)] = [(sortedChildren(0), 0, 0)]
        while var frame = stack.popLast() {
            guard frame.next < frame.children.count else { continue }
            let index = frame.children[frame.next]
            frame.next += 1
            stack.append(frame)
            path.removeSubrange(frame.length...)
            if frame.length > 0 { path.append(PathBytes.slash) }
            path += nodes[index].name
            let written = entry(index, String(decoding: path, as: UTF8.self))
            try writer.append(written)
            if !nodes[index].children.isEmpty {
                let children = sortedChildren(index)
                guard written.kind == .directory else {
                    let child = path + [PathBytes.slash] + nodes[children[0]].name
                    throw below(String(decoding: child, as: UTF8.self), written.path, written.kind)
                }
                stack.append((children, 0, path.count))
            }
        }
    }
}

/// Paths taken apart at their `/` bytes, as the kernel does. Swift's `String` works in Characters
/// and compares by canonical equivalence: a `/` followed by a combining mark is one Character, so
/// `"../\u{301}x".split(separator: "/")` is one component, not `..` and `\u{301}x`.
enum PathBytes {
    static let slash = UInt8(ascii: "/")
    static let dot: [UInt8] = [UInt8(ascii: ".")]
    static let dotdot: [UInt8] = [UInt8(ascii: "."), UInt8(ascii: ".")]

    /// The non-empty components of `path`.
    static func components(_ path: [UInt8]) -> [[UInt8]] {
        path.split(separator: slash).map { Array($0) }
    }

    static func components(_ path: String) -> [[UInt8]] { components(Array(path.utf8)) }
}

/// Where an archive entry belongs: the dump, or the storage tree (by the components of its path
/// relative to storage/; none for the folder itself).
enum Place: Equatable {
    case database
    case storage([[UInt8]])
}

/// Works out the archive's layout (at the top, or under one top folder) from its entries.
struct Layout {
    private var prefix: [UInt8]?

    /// The place of an entry, nil for the top folder itself; throws for paths that could escape
    /// and for entries outside `database.dump` and `storage/`.
    mutating func place(_ rawPath: String, isDirectory: Bool, refuse: (String, String) -> SnapError) throws -> Place? {
        if rawPath.utf8.first == PathBytes.slash { throw refuse(rawPath, "has an absolute path") }
        var components = PathBytes.components(rawPath)[...]
        while components.first == PathBytes.dot { components.removeFirst() }
        if components.contains(PathBytes.dotdot) { throw refuse(rawPath, "has '..' in its path") }
        if components.contains(PathBytes.dot) || components.contains(where: { $0.contains(0) }) {
            throw refuse(rawPath, "has an unusual path")
        }
        guard let first = components.first else { return nil }  // "./" itself
        let database = Array("database.dump".utf8)
        let storage = Array("storage".utf8)
        if prefix == nil {
            if first == database || first == storage {
                prefix = []
            } else if components.count == 1 && isDirectory {
                return nil  // perhaps the top folder; decided by the entries below it
            } else {
                prefix = first
            }
        }
        if let prefix, !prefix.isEmpty {
            guard first == prefix else {
                throw refuse(
                    rawPath, "is outside the archive's top folder '\(String(decoding: prefix, as: UTF8.self))'")
            }
            components.removeFirst()
            if components.isEmpty { return nil }
        }
        if Array(components) == [database] { return .database }
        guard components.first == storage else {
            throw refuse(rawPath, "is neither database.dump nor under storage/ (not a plain-approach backup)")
        }
        return .storage(Array(components.dropFirst()))
    }
}

/// A file read with plain `read(2)` calls.
final class InputFile {
    let fd: Int32
    let path: String
    private(set) var bytesRead: UInt64 = 0

    init(_ path: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SnapError(.invalidInput, "cannot open \(path)", cause: Errno(errno)) }
        self.path = path
    }

    deinit { close(fd) }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count >= 0 {
                bytesRead += UInt64(count)
                return count
            }
            if errno != EINTR { throw SnapError(.io, "cannot read \(path)", cause: Errno(errno)) }
        }
    }

    /// SHA-256 of the whole file.
    func sha256() throws -> String {
        let hasher = SHA256Hasher()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try read(into: $0) }
            if count == 0 { return hasher.finalize() }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
    }
}
