import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

/// Takes plain-approach backups (`backup_YYYYMMDD_HHMMSS.tar.gz` holding `database.dump` and/or
/// `storage/`, at the top or under one top folder) into the repository as snapshots.
///
/// The archive streams through once: file contents and the dump are chunked and stored as they
/// arrive (so they deduplicate against everything stored before), while the entries' metadata is
/// kept until the end, sorted into manifest order and checked. A hostile entry (an absolute path,
/// `..`, a link leading out, an entry below a symlink, a device or FIFO, a name or link target
/// that is not UTF-8), a damaged archive or a damaged pg_dump header stops the import with one
/// line naming it, before any record is written; chunks it already stored are reclaimed by prune.
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
        // Keyed by the path's bytes: Swift compares strings by Unicode canonical equivalence, so
        // "é" and "e\u{301}", two files on disk, would be one key and the later would replace
        // the earlier.
        var storage: [[UInt8]: ManifestEntry] = [:]
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
            case .storage(let relative):
                guard relative != "." || entry.kind == .directory else {
                    throw refuse(entry.path, "is not a folder, but the storage folder belongs there")
                }
                let manifestEntry: ManifestEntry
                switch entry.kind {
                case .directory:
                    manifestEntry = ManifestEntry(
                        kind: .directory, path: relative, mode: entry.mode, mtime: entry.mtime)
                case .file:
                    guard relative != "." else {
                        throw refuse(entry.path, "is a file where the storage folder belongs")
                    }
                    let stream = try writer.storeStream(.files) { buffer in
                        try reading { try tar.readContent(into: buffer) }
                    }
                    manifestEntry = ManifestEntry(
                        kind: .file, path: relative, mode: entry.mode, mtime: entry.mtime, size: stream.size,
                        chunks: stream.chunks)
                case .symlink:
                    let target = entry.linkTarget ?? ""
                    guard Self.staysInside(link: relative, target: target) else {
                        throw refuse(
                            entry.path,
                            "is a symlink to '\(Tar.shown(Array(target.utf8)))', which leads out of storage/")
                    }
                    manifestEntry = ManifestEntry(
                        kind: .symlink, path: relative, mode: entry.mode, mtime: entry.mtime, target: target)
                case .hardlink:
                    // A hard link to a file earlier in the archive becomes a copy of it.
                    let target = entry.linkTarget ?? ""
                    guard
                        case .storage(let targetPath)? = try? layout.place(target, isDirectory: false, refuse: refuse),
                        let original = storage[Array(targetPath.utf8)], original.kind == .file
                    else {
                        throw refuse(
                            entry.path,
                            "is a hard link to '\(Tar.shown(Array(target.utf8)))', which is not a file earlier in storage/"
                        )
                    }
                    manifestEntry = ManifestEntry(
                        kind: .file, path: relative, mode: original.mode, mtime: original.mtime, size: original.size,
                        chunks: original.chunks)
                case .other(let type):
                    throw refuse(entry.path, "is a device node, FIFO or other special file (tar type '\(type)')")
                }
                storage[Array(relative.utf8)] = manifestEntry  // listed twice: the later one wins, as with tar
            }
        }

        // Manifest order: depth first, names sorted by their bytes; parents must be folders. The
        // tree goes into a part of its own, as `snap snapshot` does, so that the manifest of an
        // exported snapshot imported again is chunked alike and stores nothing new.
        if let database { try writer.append(database) }
        let tree = writer.makePart()
        if !storage.isEmpty {
            try appendTree(storage, newest: newest, to: tree, refuse: refuse)
        }
        let time = Self.timeFromName(path) ?? Timestamp(nanoseconds: newest)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let origin = SnapshotRecord.ImportOrigin(
            file: name, size: input.bytesRead, sha256: hasher.finalize(),
            compressedDump: dumpHeader?.compressed ?? false)
        let facts = database.map { _ in dumpHeader?.facts ?? DumpHeader.unknownFacts }
        return try writer.commit(
            time: time, host: SnapshotOptions.localHost, tags: ["imported"] + tags, program: program,
            sources: .init(storage: storage.isEmpty ? nil : "\(name):storage/", database: facts, imported: origin),
            errors: [], parts: [tree])
    }

    /// Sorts the storage entries into manifest order, adds the folders the archive left implicit,
    /// and refuses an entry whose parent is not a folder (a file placed below a symlink, say).
    private func appendTree(
        _ storage: [[UInt8]: ManifestEntry], newest: Int64, to writer: SnapshotWriter,
        refuse: (String, String) -> SnapError
    ) throws {
        var entries = storage
        if entries[PathBytes.dot] == nil {
            entries[PathBytes.dot] = ManifestEntry(kind: .directory, path: ".", mode: 0o755, mtime: newest)
        }
        // A link whose target passes through another link could reach anywhere that one does:
        // refuse those, so that every link, followed step by step, stays inside.
        for entry in storage.values where entry.kind == .symlink {
            var resolved = PathBytes.components(entry.path).dropLast()
            let steps = PathBytes.components(entry.target ?? "").filter { $0 != PathBytes.dot }
            for (index, step) in steps.enumerated() {
                if step == PathBytes.dotdot { resolved.removeLast() } else { resolved.append(step) }
                let through = PathBytes.joined(resolved)
                if index < steps.count - 1, entries[through]?.kind == .symlink {
                    throw refuse(
                        "storage/" + entry.path,
                        "is a symlink whose target passes through the symlink '\(String(decoding: through, as: UTF8.self))'"
                    )
                }
            }
        }
        for (path, entry) in storage where path != PathBytes.dot {
            var parent = path
            while let slash = parent.lastIndex(of: PathBytes.slash) {
                parent.removeSubrange(slash...)
                let parentPath = String(decoding: parent, as: UTF8.self)
                if let existing = entries[parent] {
                    guard existing.kind == .directory else {
                        throw refuse(
                            "storage/" + entry.path,
                            "lies below '\(parentPath)', which is a \(existing.kind.rawValue), not a folder")
                    }
                } else {
                    entries[parent] = ManifestEntry(kind: .directory, path: parentPath, mode: 0o755, mtime: newest)
                }
            }
        }
        let ordered = entries.values.sorted { a, b in
            if a.path == "." || b.path == "." { return a.path == "." && b.path != "." }
            let left = a.path.utf8.split(separator: PathBytes.slash, omittingEmptySubsequences: false)
            let right = b.path.utf8.split(separator: PathBytes.slash, omittingEmptySubsequences: false)
            return left.lexicographicallyPrecedes(right) { $0.lexicographicallyPrecedes($1) }
        }
        for entry in ordered { try writer.append(entry) }
    }

    /// Whether a symlink at `link` (relative to storage/) pointing at `target` stays inside.
    /// Works on bytes, as the kernel does: a NUL would cut the target short when the link is made.
    static func staysInside(link: String, target: String) -> Bool {
        let bytes = Array(target.utf8)
        guard bytes.first != PathBytes.slash, !bytes.isEmpty, !bytes.contains(0) else { return false }
        var depth = PathBytes.components(link).count - 1  // the link's folder
        for component in PathBytes.components(target) {
            switch component {
            case PathBytes.dot: continue
            case PathBytes.dotdot: depth -= 1
            default: depth += 1
            }
            if depth < 0 { return false }
        }
        return true
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
    static func components(_ path: String) -> [[UInt8]] {
        path.utf8.split(separator: slash).map(Array.init)
    }

    static func joined(_ components: some Sequence<[UInt8]>) -> [UInt8] {
        Array(components.joined(separator: [slash]))
    }
}

/// Where an archive entry belongs: the dump, or the storage tree (by path relative to storage/).
enum Place: Equatable {
    case database
    case storage(String)
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
        let relative = PathBytes.joined(components.dropFirst())
        return .storage(relative.isEmpty ? "." : String(decoding: relative, as: UTF8.self))
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
