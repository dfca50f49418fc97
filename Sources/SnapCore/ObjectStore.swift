import CLinux
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
/// `put` writes each object to a temporary file in its final folder. `flush` then makes a whole
/// batch durable with one `syncfs` (a per-file `fsync` costs a journal commit per object, which
/// dominated snapshot time), renames each temporary file to its final name without replacing
/// (`renameat2` with `RENAME_NOREPLACE`; `link` then `unlink` where the filesystem lacks it, so an
/// existing object is never rewritten) and makes the changed folders durable with a second
/// `syncfs`. Where `syncfs` cannot be trusted (see `Durability`), each file and folder is
/// fsynced. An object therefore never appears under its name before its bytes are on disk. `put`
/// flushes by itself every `flushEvery` objects, so the list of pending objects stays small.
public final class LocalObjectStore: ObjectStore {
    /// Leftovers of interrupted writes start with this; `list` skips them and prune removes them.
    public static let temporaryPrefix = ".tmp-"

    let root: String
    let flushEvery: Int
    /// What root creates here is given to the repository's owner.
    let owner: RepositoryOwner
    private let dirtyFolders = Mutex<Set<String>>([])
    private let knownFolders = Mutex<Set<String>>([])
    private let pending = Mutex<[(temporary: String, final: String, folder: String)]>([])
    /// One flush at a time: the `syncfs` must cover every temporary file it publishes.
    private let flushing = Mutex<Void>(())
    private let durability = Mutex<Durability>(.undecided)

    /// How a flush makes files durable; decided before the first object is written.
    private enum Durability {
        case undecided
        /// `syncfs` through a descriptor opened before any object was written: it reports every
        /// write error on the filesystem since then (one opened later may miss an error another
        /// caller has already been told of).
        case wholeFileSystem(FileHandle)
        /// `fsync` of each file and folder: on filesystems where `syncfs` may succeed without
        /// syncing (FUSE), and for good once a `syncfs` has failed, since it reports an error once
        /// and only a file's own `fsync` can then vouch for it.
        case eachFile
    }

    /// Filesystems whose `syncfs` commits everything written before it (statfs magic numbers):
    /// ext2/3/4, XFS, Btrfs, F2FS, ZFS, overlayfs (syncs its upper layer), tmpfs (nothing to sync).
    /// Trusted only on kernels whose `syncfs` reports write errors (`syncfsReportsErrors`).
    static let syncfsFileSystems: Set<Int> = [
        0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010, 0x2FC1_2FC1, 0x794C_7630, 0x0102_1994,
    ]

    /// `syncfs` reports a failed writeback only from Linux 5.8 on; before, it returns 0 regardless.
    static let syncfsReportsErrors: Bool = {
        var names = utsname()
        guard uname(&names) == 0 else { return false }
        let release = withUnsafeBytes(of: names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let numbers = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard numbers.count == 2 else { return false }
        return (numbers[0], numbers[1]) >= (5, 8)
    }()

    /// The filesystems where this store trusts `syncfs`; tests narrow it to reach the `fsync` path.
    let syncfsFileSystems: Set<Int>

    public convenience init(root: String, flushEvery: Int = 4096) {
        self.init(root: root, flushEvery: flushEvery, syncfsFileSystems: Self.syncfsFileSystems)
    }

    /// `owner` defaults to the user running snap: nothing to give away.
    init(root: String, flushEvery: Int, syncfsFileSystems: Set<Int>, owner: RepositoryOwner? = nil) {
        self.root = root
        self.flushEvery = flushEvery
        self.syncfsFileSystems = syncfsFileSystems
        self.owner = owner ?? RepositoryOwner(uid: geteuid(), gid: getegid(), path: root)
    }

    convenience init(root: String, owner: RepositoryOwner) {
        self.init(root: root, flushEvery: 4096, syncfsFileSystems: Self.syncfsFileSystems, owner: owner)
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
                // The new folder's own entry must be durable too, or a committed object could
                // vanish; marked before the folder counts as known, so no flush can miss it.
                dirtyFolders.withLock { _ = $0.insert(root) }
                knownFolders.withLock { _ = $0.insert(folder) }
            }
            if try Posix.status(final, in: nil) != nil { return false }
            _ = try syncHandle()
            handle = try FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
        } catch {
            throw owner.explain(error)
        }
        do {
            try owner.adopt(handle)
            try handle.writeAll(encoded)
            try handle.close()
        } catch {
            unlink(temporary)
            throw owner.explain(error)
        }
        FaultInjection.step()
        let count = pending.withLock {
            $0.append((temporary, final, folder))
            return $0.count
        }
        if count >= flushEvery { try flush() }
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
        try owner.explaining { try flushUnexplained() }
    }

    private func flushUnexplained() throws {
        try flushing.withLock { _ in
            let batch = pending.withLock { list in
                defer { list.removeAll() }
                return list
            }
            if !batch.isEmpty {
                try makeDurable(batch.map(\.temporary))
                for object in batch {
                    try publish(temporary: object.temporary, as: object.final)
                    dirtyFolders.withLock { _ = $0.insert(object.folder) }
                    FaultInjection.step()
                }
            }
            let folders = dirtyFolders.withLock { folders in
                defer { folders.removeAll() }
                return folders
            }
            do {
                // Deepest first: an `objects/XX` entry must be durable before `objects/` is.
                try makeDurable(folders.sorted(by: { $0.count > $1.count }))
            } catch {
                dirtyFolders.withLock { $0.formUnion(folders) }
                throw error
            }
        }
    }

    /// The descriptor to `syncfs` through, or nil when each file is fsynced.
    private func syncHandle() throws -> FileHandle? {
        try durability.withLock { state in
            if case .undecided = state {
                let type = snap_filesystem_type(root)
                state =
                    syncfsFileSystems.contains(type) && Self.syncfsReportsErrors
                    ? .wholeFileSystem(try FileHandle.open(root, O_RDONLY | O_DIRECTORY)) : .eachFile
            }
            if case .wholeFileSystem(let handle) = state { return handle }
            return nil
        }
    }

    /// Makes the files or folders at `paths` durable: one `syncfs`, or an `fsync` of each.
    private func makeDurable(_ paths: [String]) throws {
        guard !paths.isEmpty else { return }
        if let handle = try syncHandle() {
            if syncfs(handle.fd) == 0 { return }
            durability.withLock { $0 = .eachFile }
        }
        for path in paths { try FileHandle.open(path, O_RDONLY).sync() }
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

private func isLowercaseHex(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
}
