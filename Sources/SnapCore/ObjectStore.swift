import CLinux
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Where encoded objects live. The local folder layout is the only backend today; the interface
/// is kept this small so that another one (an object storage bucket, say) can follow.
public protocol ObjectStore: Sendable {
    /// Stores `encoded` under `id` unless an object of that name exists; returns whether it wrote.
    /// An existing object is never rewritten. The object is durable, and may only be visible,
    /// once `flush` has returned.
    @discardableResult
    func put(_ id: ObjectID, encoded: [UInt8]) throws -> Bool
    /// The encoded bytes stored under `id`.
    func get(_ id: ObjectID) throws -> [UInt8]
    func contains(_ id: ObjectID) throws -> Bool
    /// Whether `id` is stored, or was put through this store and waits for `flush`: what a writer
    /// asks before storing a chunk, instead of holding every name the repository has. A stored
    /// object found here is made durable too by the next `flush`: another writer may have just
    /// published it, and a record that reuses it must not outlive it in a power cut.
    func containsOrPending(_ id: ObjectID) throws -> Bool
    /// Calls `body` with every stored object name, in no particular order.
    func list(_ body: (ObjectID) throws -> Void) throws
    /// The stored (encoded) size of an object, nil when it does not exist.
    func size(of id: ObjectID) throws -> UInt64?
    func delete(_ id: ObjectID) throws
    /// Makes every `put` so far durable and visible; called before a snapshot record needs them.
    func flush() throws
}

/// `<repo>/objects/XX/<sha256-hex>`: one file per object, XX the first two hex digits.
///
/// `put` writes each object to a temporary file in its final folder and keeps it open. `flush`
/// then starts the writeback of the whole batch (`sync_file_range`), makes it durable with an
/// `fdatasync` of each file, issued from many threads at once (`ParallelSync`), renames each
/// temporary file to its final name without replacing (`renameat2` with `RENAME_NOREPLACE`; `link` then `unlink` where the filesystem lacks it, so an
/// existing object is never rewritten) and fsyncs the changed folders the same way. An object
/// therefore never appears under its name before its bytes are on disk, and only what snap wrote
/// is forced to disk: the `syncfs` used before flushed every dirty page of the filesystem, a
/// database's included. `put` flushes by itself every `flushEvery` objects, so the list of
/// pending objects (and their open descriptors) stays small.
public final class LocalObjectStore: ObjectStore {
    /// Leftovers of interrupted writes start with this; `list` skips them and prune removes them.
    public static let temporaryPrefix = ".tmp-"

    let root: String
    let flushEvery: Int
    /// What root creates here is given to the repository's owner.
    let owner: RepositoryOwner
    private let dirtyFolders = Mutex<Set<String>>([])
    private let knownFolders = Mutex<Set<String>>([])
    private let pending = Mutex<Pending>(Pending())
    /// One flush at a time: each publishes only files it made durable itself.
    private let flushing = Mutex<Void>(())

    /// Objects put and not yet published.
    private struct Pending {
        /// Their temporary files, still open: `fdatasync` through the descriptor that wrote a file
        /// reports a failed writeback of it, however long ago it happened.
        var files: [(id: ObjectID, handle: FileHandle, temporary: String, final: String, folder: String)] = []
        /// Their names, until they are published: `containsOrPending` must see an object at every
        /// moment from its `put` on, or a writer would store it twice.
        var names: Set<ObjectID> = []
    }

    /// Objects written between two flushes: 4,096, or fewer when the descriptor limit is low
    /// (each waits for its flush with its file open).
    static var defaultFlushEvery: Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 256 }
        return Int(max(64, min(4096, limit.rlim_cur / 4)))
    }

    public convenience init(root: String) {
        self.init(root: root, flushEvery: Self.defaultFlushEvery)
    }

    /// `owner` defaults to the user running snap: nothing to give away.
    init(root: String, flushEvery: Int, owner: RepositoryOwner? = nil) {
        self.root = root
        self.flushEvery = flushEvery
        self.owner = owner ?? RepositoryOwner(uid: geteuid(), gid: getegid(), path: root)
    }

    convenience init(root: String, owner: RepositoryOwner) {
        self.init(root: root, flushEvery: Self.defaultFlushEvery, owner: owner)
    }

    func folder(for id: ObjectID) -> String { join(root, String(id.hex.prefix(2))) }
    func path(for id: ObjectID) -> String { join(folder(for: id), id.hex) }

    /// Writes the object's temporary file; it appears under its name at the next `flush`. Returns
    /// false, writing nothing, when the object exists already.
    @discardableResult
    public func put(_ id: ObjectID, encoded: [UInt8]) throws -> Bool {
        let folder = folder(for: id)
        let final = join(folder, id.hex)
        let temporary = join(folder, Self.temporaryPrefix + id.hex + "-" + Posix.randomHex(6))
        let handle: FileHandle
        do {
            if !knownFolders.withLock({ $0.contains(folder) }) {
                try owner.makeFolder(folder)
                // The folder's own entry must be durable too, or a committed object could vanish
                // (whoever made it may not have synced `objects/` yet); marked before the folder
                // counts as known, so no flush can miss it.
                dirtyFolders.withLock { _ = $0.insert(root) }
                knownFolders.withLock { _ = $0.insert(folder) }
            }
            if try Posix.status(final, in: nil) != nil { return false }
            handle = try FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        } catch {
            throw owner.explain(error)
        }
        do {
            try owner.adopt(handle)
            try handle.writeAll(encoded)
        } catch {
            unlink(temporary)
            throw owner.explain(error)
        }
        FaultInjection.step()
        let count = pending.withLock {
            $0.files.append((id, handle, temporary, final, folder))
            $0.names.insert(id)
            return $0.files.count
        }
        if count >= flushEvery { try flush(folders: false) }
        return true
    }

    public func get(_ id: ObjectID) throws -> [UInt8] {
        let path = path(for: id)
        let handle: FileHandle
        do {
            handle = try FileHandle.open(path, O_RDONLY)
        } catch let error as SnapError {
            if error.errorNumber == ENOENT {
                throw SnapError(.notFound, "object \(id.hex) is missing from the repository")
            }
            throw owner.explain(error)
        }
        return try owner.explaining { try handle.readAll() }
    }

    public func contains(_ id: ObjectID) throws -> Bool {
        try size(of: id) != nil
    }

    public func containsOrPending(_ id: ObjectID) throws -> Bool {
        // Pending first: `flush` publishes a name before it forgets it, so there is no moment
        // when an object is in neither place.
        if pending.withLock({ $0.names.contains(id) }) { return true }
        guard try contains(id) else { return false }
        // Its name (and its folder's) may not be durable yet if another writer published it a
        // moment ago.
        dirtyFolders.withLock { $0.formUnion([folder(for: id), root]) }
        return true
    }

    public func size(of id: ObjectID) throws -> UInt64? {
        try owner.explaining { try Posix.status(path(for: id), in: nil)?.size }
    }

    public func list(_ body: (ObjectID) throws -> Void) throws {
        try scan(object: body, other: { _ in })
    }

    /// Walks the store once: `object` gets every name a lookup would find (lowercase, in the
    /// folder of its first two digits); `other` gets the path, relative to the store, of anything
    /// else (temporary files of interrupted writes excepted).
    func scan(object: (ObjectID) throws -> Void, other: (String) -> Void) throws {
        let rootHandle = try owner.explaining { try FileHandle.open(root, O_RDONLY | O_DIRECTORY) }
        for folderName in try owner.explaining({ try Posix.listDirectory(rootHandle) }).sorted(by: {
            $0.lexicographicallyPrecedes($1)
        }) {
            let folderText = String(decoding: folderName, as: UTF8.self)
            guard folderName.count == 2, folderName.allSatisfy(isLowercaseHex),
                let status = try owner.explaining({ try Posix.status(folderText, in: rootHandle) }),
                status.kind == .directory
            else {
                other(folderText)
                continue
            }
            let names = try owner.explaining {
                try Posix.listDirectory(try FileHandle.open(folderText, O_RDONLY | O_DIRECTORY, at: rootHandle))
            }
            for name in names {
                let text = String(decoding: name, as: UTF8.self)
                if name.count == 64, name.allSatisfy(isLowercaseHex), name.starts(with: folderName),
                    let id = ObjectID(hex: text)
                {
                    try object(id)
                } else if !text.hasPrefix(Self.temporaryPrefix) {
                    other(folderText + "/" + text)
                }
            }
        }
    }

    public func delete(_ id: ObjectID) throws {
        try owner.explaining { try Posix.unlink(path(for: id), in: nil) }
        dirtyFolders.withLock { _ = $0.insert(folder(for: id)) }
        FaultInjection.step()
    }

    public func flush() throws {
        try flush(folders: true)
    }

    /// With `folders` false (a full batch, from `put`) the changed folders wait for the next
    /// flush that a record waits for: fsyncing them once per snapshot instead of once per batch
    /// saves 256 fsyncs a batch when objects are small.
    private func flush(folders syncFolders: Bool) throws {
        try flushing.withLock { _ in
            let batch = pending.withLock { pending in
                defer { pending.files.removeAll() }
                return pending.files
            }
            if !batch.isEmpty {
                // Every file's writeback is under way before the first fdatasync commits the
                // journal, so that one commit takes in as many files as it can. In file order, on
                // one thread: the writes then reach the disk in long runs (measured faster than
                // starting each at `put`, on the compressing threads, or from many threads).
                // Only a hint: a filesystem may not support it; the fdatasync is what counts.
                for object in batch {
                    _ = sync_file_range(object.handle.fd, 0, 0, UInt32(SNAP_SYNC_FILE_RANGE_WRITE))
                }
                try owner.explaining {
                    try ParallelSync.forEach(batch.count) { index in
                        try batch[index].handle.syncData()
                        try batch[index].handle.close()
                    }
                }
                for object in batch {
                    try publish(temporary: object.temporary, as: object.final)
                    dirtyFolders.withLock { _ = $0.insert(object.folder) }
                    FaultInjection.step()
                }
                pending.withLock { $0.names.subtract(batch.map(\.id)) }
            }
            guard syncFolders else { return }
            let folders = Array(
                dirtyFolders.withLock { folders in
                    defer { folders.removeAll() }
                    return folders
                })
            do {
                try owner.explaining {
                    try ParallelSync.forEach(folders.count) { index in
                        try FileHandle.open(folders[index], O_RDONLY | O_DIRECTORY).sync()
                    }
                }
            } catch {
                dirtyFolders.withLock { $0.formUnion(folders) }
                throw error
            }
        }
    }

    /// Gives a durable temporary file its object name, never replacing an existing object.
    private func publish(temporary: String, as final: String) throws {
        if renameat2(AT_FDCWD, temporary, AT_FDCWD, final, UInt32(SNAP_RENAME_NOREPLACE)) == 0 { return }
        var failure = errno
        if failure == EINVAL || failure == ENOSYS {
            // Filesystems that cannot rename without replacing: `link` fails rather than replaces.
            failure = link(temporary, final) == 0 ? 0 : errno
        }
        unlink(temporary)
        guard failure == 0 || failure == EEXIST else {
            throw owner.explain(SnapError(.io, "cannot store object \(final)", cause: Errno(failure)))
        }
    }
}

/// Runs blocking system calls (fsync) for many files at once.
///
/// A journaled filesystem makes an `fsync` durable with a journal commit, and a commit waits for
/// the disk; each commit takes in every change made before it. One `fsync` after the other thus
/// costs a commit per file (2,300 objects: 13 s on a journaled ext4, against 0.4 s for one
/// `syncfs`; docs/BENCHMARKS.md), while the same fsyncs issued from 32 threads at once, once
/// each file's writeback has been started, share a few commits and take about what the `syncfs`
/// took, without forcing anyone else's dirty pages to disk. The threads only wait on the disk.
enum ParallelSync {
    static let threads = 32

    /// Calls `body` with every index below `count`, on up to `threads` threads (the caller's
    /// among them); throws the first error once all have stopped. After an error no new index is
    /// started.
    static func forEach(_ count: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
        guard count > 0 else { return }
        let state = State()
        let work: @Sendable () -> Void = {
            while state.failure.withLock({ $0 == nil }) {
                let index = state.next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < count else { return }
                do {
                    try body(index)
                } catch {
                    state.failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        let done = DispatchGroup()
        for _ in 1..<min(count, threads) {
            done.enter()
            Thread {
                work()
                done.leave()
            }.start()
        }
        work()
        done.wait()
        if let failure = state.failure.withLock({ $0 }) { throw failure }
    }

    private final class State: Sendable {
        let next = Atomic<Int>(0)
        let failure = Mutex<(any Error)?>(nil)
    }
}

private func isLowercaseHex(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
}
