import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What snap knew about each file of a storage folder at its last snapshot, kept outside the
/// repository (`$SNAP_CACHE_DIR`, else `$XDG_CACHE_HOME/snap`, else `~/.cache/snap`): a file whose
/// size, mtime, ctime, inode and device are unchanged is not read again; its chunks are taken from
/// here when the repository still has every one of them. Losing the cache costs only time. The
/// previous cache is read, and the new one written, as the walk goes: memory does not grow with
/// the number of files.
///
/// ctime cannot be set by users, so a file edited and then given its old mtime back is still
/// read. Files changed less than two seconds before the snapshot started are not remembered: a
/// second change within the same clock tick would leave every time stamp as it was.
final class FilesCache {
    struct Entry {
        var size: UInt64
        var mtime: Int64
        var ctime: Int64
        var inode: UInt64
        var device: UInt64
        var chunks: [ObjectID]
    }

    private var previous: PreviousCache?
    private let path: String?
    /// The new cache, written as the walk goes (only what is not yet written is held here) to a
    /// temporary file that `save` renames into place; nil once writing it failed.
    private var output: (handle: FileHandle, temporary: String)?
    private var pending: [UInt8] = []
    private let started: Int64

    /// Loads the cache of `storage` (an absolute path) for `repository`; empty when there is none.
    init(repository: Repository, storage: String, started: Timestamp) {
        self.started = started.nanoseconds
        let environment = ProcessInfo.processInfo.environment
        let base =
            environment["SNAP_CACHE_DIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : join($0, "snap") }
            ?? environment["HOME"].flatMap { $0.isEmpty ? nil : join($0, ".cache/snap") }
        guard let base else {
            path = nil
            return
        }
        let name = "files-" + String(ObjectID(hashing: Array(storage.utf8)).hex.prefix(16))
        let path = join(join(base, repository.config.id), name)
        self.path = path
        let store = repository.store
        previous = (try? FileHandle.open(path, O_RDONLY)).map {
            PreviousCache($0, present: { (try? store.contains($0)) == true })
        }
        let folder = String(path[..<path.lastIndex(of: "/")!])
        try? Repository.makeDirectories(folder)
        // Left by killed runs; at worst one belongs to a run now going, which then keeps its old cache.
        if let handle = try? FileHandle.open(folder, O_RDONLY | O_DIRECTORY),
            let names = try? Posix.listDirectory(handle)
        {
            for leftover in names where leftover.starts(with: Array((name + ".tmp-").utf8)) {
                try? Posix.unlink(leftover, in: handle)
            }
        }
        let temporary = path + ".tmp-" + Posix.randomHex(6)
        if let handle = try? FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600) {
            output = (handle, temporary)
        }
    }

    deinit {
        // Not saved: the snapshot failed, and the old cache stays as it was.
        if let output { unlink(output.temporary) }
    }

    /// The chunks of an unchanged file, when every one of them is in the repository (or, by
    /// `known`, queued by this run): a file whose objects are missing is read again, which is
    /// how a snapshot stores an object that was lost again. Files are looked up in walk order
    /// (see `PreviousCache`).
    func lookup(_ path: String, _ status: FileStatus, known: (ObjectID) -> Bool) -> [ObjectID]? {
        guard let (entry, present) = previous?.entry(for: Array(path.utf8)), entry.size == status.size,
            entry.mtime == status.mtimeNanoseconds, entry.ctime == status.ctimeNanoseconds,
            entry.inode == status.inode, entry.device == status.device,
            present || entry.chunks.allSatisfy(known)
        else { return nil }
        return entry.chunks
    }

    /// Remembers a file for the next snapshot.
    func record(_ path: String, _ status: FileStatus, chunks: [ObjectID]) {
        let recent = started - 2_000_000_000
        guard output != nil, status.mtimeNanoseconds < recent, status.ctimeNanoseconds < recent else { return }
        // size mtime ctime inode device count chunk... pathlength:path
        var line =
            "\(status.size) \(status.mtimeNanoseconds) \(status.ctimeNanoseconds) \(status.inode) \(status.device) \(chunks.count)"
        for chunk in chunks { line += " " + chunk.hex }
        pending.append(contentsOf: line.utf8)
        pending.append(contentsOf: " \(path.utf8.count):".utf8)
        pending.append(contentsOf: path.utf8)
        pending.append(0x0A)
        if pending.count >= 1 << 20 { writePending() }
    }

    private func writePending() {
        guard let output else { return }
        do {
            try output.handle.writeAll(pending)
            pending.removeAll(keepingCapacity: true)
        } catch {
            // The cache only saves time: without it the next snapshot reads every file.
            unlink(output.temporary)
            self.output = nil
        }
    }

    /// Replaces the cache with what this snapshot saw; call after the snapshot is committed.
    /// Failures are ignored: the cache only saves time.
    func save() {
        writePending()
        guard let output, let path else { return }
        self.output = nil
        if (try? output.handle.sync()) == nil || (try? output.handle.close()) == nil
            || rename(output.temporary, path) != 0
        {
            unlink(output.temporary)
        }
    }

    enum Parsed {
        case entry(path: [UInt8], Entry, end: Int)
        /// The entry goes on past the bytes at hand.
        case incomplete
        case damaged
    }

    /// The entry that starts at `start`: `size mtime ctime inode device count chunk... length:path\n`.
    /// Whatever the bytes hold (a damaged disk, a hand edit), nothing traps.
    static func parseEntry(_ bytes: [UInt8], at start: Int) -> Parsed {
        var index = start
        var ranOut = false
        func number() -> UInt64? {
            var value: UInt64 = 0
            var digits = 0
            var negative = false
            if index < bytes.count, bytes[index] == UInt8(ascii: "-") {
                negative = true
                index += 1
            }
            while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
                value = value &* 10 &+ UInt64(bytes[index] - 48)
                index += 1
                digits += 1
            }
            if index == bytes.count { ranOut = true }
            guard digits > 0 else { return nil }
            return negative ? UInt64(bitPattern: 0 &- Int64(bitPattern: value)) : value
        }
        func skip(_ byte: UInt8) -> Bool {
            guard index < bytes.count else {
                ranOut = true
                return false
            }
            guard bytes[index] == byte else { return false }
            index += 1
            return true
        }
        func result(_ parsed: Parsed) -> Parsed { ranOut ? .incomplete : parsed }
        guard let size = number(), skip(32), let mtime = number(), skip(32), let ctime = number(), skip(32),
            let inode = number(), skip(32), let device = number(), skip(32), let count = number()
        else { return result(.damaged) }
        // No chunk is smaller than 64 bytes (ChunkerParameters.validate), so a count can be checked.
        guard count <= size / 64 + 1 else { return .damaged }
        var chunks: [ObjectID] = []
        for _ in 0..<count {
            guard skip(32) else { return result(.damaged) }
            guard index + 64 <= bytes.count else { return .incomplete }
            guard let id = ObjectID(hex: String(decoding: bytes[index..<index + 64], as: UTF8.self)) else {
                return .damaged
            }
            chunks.append(id)
            index += 64
        }
        guard skip(32), let length = number(), skip(UInt8(ascii: ":")) else { return result(.damaged) }
        guard length < UInt64(bytes.count - index) else { return length > 1 << 20 ? .damaged : .incomplete }
        let name = Array(bytes[index..<index + Int(length)])
        index += Int(length)
        guard skip(0x0A) else { return result(.damaged) }
        let entry = Entry(
            size: size, mtime: Int64(bitPattern: mtime), ctime: Int64(bitPattern: ctime), inode: inode,
            device: device, chunks: chunks)
        return .entry(path: name, entry, end: index)
    }

    /// The previous cache, read in step with the walk instead of held whole: both list files in
    /// walk order (each folder's names sorted by bytes, a folder's content right after its name),
    /// so a lookup only ever moves forward.
    ///
    /// A thread reads and parses it ahead of the walk and asks the repository whether each
    /// entry's objects are there (a `stat` each: the snapshot holds no list of the repository's
    /// names), so that on a tree of unchanged files those lookups run beside the walk instead of
    /// in it. It stays at most a few batches ahead.
    final class PreviousCache {
        /// One entry, and whether every object it names was in the repository when it was read.
        typealias Checked = (path: [UInt8], entry: Entry, present: Bool)

        private let queue = BlockingQueue<[Checked]>(capacity: 4)
        private let reading = DispatchGroup()
        private var batch: [Checked] = []
        private var index = 0
        private var next: Checked?

        init(_ handle: FileHandle, present: @escaping @Sendable (ObjectID) -> Bool) {
            reading.enter()
            Thread { [queue, reading] in
                var parser = Parser(handle)
                var checked: [Checked] = []
                while let (path, entry) = parser.next() {
                    checked.append((path, entry, entry.chunks.allSatisfy(present)))
                    if checked.count == 256 {
                        guard queue.push(checked) else { break }  // the walk is over
                        checked = []
                    }
                }
                if !checked.isEmpty { queue.push(checked) }
                queue.close()
                reading.leave()
            }.start()
            advance()
        }

        deinit {
            queue.close()
            reading.wait()
        }

        /// The entry for `path`, passing over those of files that are gone.
        func entry(for path: [UInt8]) -> (entry: Entry, present: Bool)? {
            while let next, Self.walkOrder(next.path, precedes: path) { advance() }
            guard let next, next.path == path else { return nil }
            advance()
            return (next.entry, next.present)
        }

        /// Paths compared component by component, as the walk visits them: a `/` sorts before
        /// every byte a name can hold, so `a/b` comes before `a-b` and `ab`.
        static func walkOrder(_ a: [UInt8], precedes b: [UInt8]) -> Bool {
            for (x, y) in zip(a, b) where x != y {
                if x == UInt8(ascii: "/") { return true }
                if y == UInt8(ascii: "/") { return false }
                return x < y
            }
            return a.count < b.count
        }

        private func advance() {
            if index == batch.count {
                batch = queue.pop() ?? []
                index = 0
            }
            next = index < batch.count ? batch[index] : nil
            index += 1
        }
    }

    /// Reads cache entries from a file one after the other, 1 MiB at a time.
    struct Parser {
        private let handle: FileHandle
        private var bytes: [UInt8] = []
        private var index = 0
        private var atEnd = false

        init(_ handle: FileHandle) { self.handle = handle }

        /// The next entry; nil at the end of the file, and for good once an entry is damaged
        /// (the rest of the cache is not used).
        mutating func next() -> (path: [UInt8], entry: Entry)? {
            while true {
                switch FilesCache.parseEntry(bytes, at: index) {
                case .entry(let path, let entry, let end):
                    index = end
                    return (path, entry)
                case .damaged:
                    atEnd = true
                    bytes = []
                    index = 0
                    return nil
                case .incomplete:
                    guard refill() else { return nil }
                }
            }
        }

        /// Drops what was parsed and reads up to 1 MiB more; false at the end of the file.
        private mutating func refill() -> Bool {
            guard !atEnd else { return false }
            bytes.removeFirst(index)
            index = 0
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            let count = (try? chunk.withUnsafeMutableBytes { try handle.read(into: $0) }) ?? 0
            if count == 0 {
                atEnd = true
                return false
            }
            bytes += chunk[0..<count]
            return true
        }
    }
}
