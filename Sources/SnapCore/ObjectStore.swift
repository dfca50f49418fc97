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
    /// An existing object is never rewritten.
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
    /// Makes every `put` so far durable; called before a snapshot record commits them.
    func flush() throws
}

/// `<repo>/objects/XX/<sha256-hex>`: one file per object, XX the first two hex digits.
///
/// Each object is written to a temporary file in its final folder, fsynced, then linked into
/// place (which fails rather than replaces when the name exists) and the temporary name removed.
public final class LocalObjectStore: ObjectStore {
    /// Leftovers of interrupted writes start with this; `list` skips them and prune removes them.
    public static let temporaryPrefix = ".tmp-"

    let root: String
    private let dirtyFolders = Mutex<Set<String>>([])
    private let knownFolders = Mutex<Set<String>>([])

    public init(root: String) {
        self.root = root
    }

    func folder(for id: ObjectID) -> String { join(root, String(id.hex.prefix(2))) }
    func path(for id: ObjectID) -> String { join(folder(for: id), id.hex) }

    public func put(_ id: ObjectID, encoded: [UInt8]) throws -> Bool {
        let folder = folder(for: id)
        if !knownFolders.withLock({ $0.contains(folder) }) {
            try Posix.ensureDirectory(folder, in: nil)
            knownFolders.withLock { _ = $0.insert(folder) }
            // The new folder's own entry must be durable too, or a committed object could vanish.
            dirtyFolders.withLock { _ = $0.insert(root) }
        }
        let final = join(folder, id.hex)
        let temporary = join(folder, Self.temporaryPrefix + id.hex + "-" + Posix.randomHex(6))
        do {
            let handle = try FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            try handle.writeAll(encoded)
            try handle.sync()
        } catch {
            unlink(temporary)
            throw error
        }
        defer { unlink(temporary) }
        if link(temporary, final) == 0 {
            dirtyFolders.withLock { _ = $0.insert(folder) }
            return true
        }
        let failure = errno
        if failure == EEXIST { return false }
        throw SnapError(.io, "cannot store object \(final)", cause: Errno(failure))
    }

    public func get(_ id: ObjectID) throws -> [UInt8] {
        let path = path(for: id)
        let handle: FileHandle
        do {
            handle = try FileHandle.open(path, O_RDONLY)
        } catch let error as SnapError {
            if case let errno as Errno = error.cause, errno.rawValue == ENOENT {
                throw SnapError(.notFound, "object \(id.hex) is missing from the repository")
            }
            throw error
        }
        return try handle.readAll()
    }

    public func contains(_ id: ObjectID) throws -> Bool {
        try size(of: id) != nil
    }

    public func size(of id: ObjectID) throws -> UInt64? {
        try Posix.status(path(for: id), in: nil)?.size
    }

    public func list(_ body: (ObjectID) throws -> Void) throws {
        let rootHandle = try FileHandle.open(root, O_RDONLY | O_DIRECTORY)
        for folderName in try Posix.listDirectory(rootHandle).sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            guard folderName.count == 2, folderName.allSatisfy(isLowercaseHex) else { continue }
            let folder = try FileHandle.open(
                String(decoding: folderName, as: UTF8.self), O_RDONLY | O_DIRECTORY, at: rootHandle)
            for name in try Posix.listDirectory(folder) {
                // Only names a lookup would find: lowercase, in the folder of their first two digits.
                guard name.count == 64, name.allSatisfy(isLowercaseHex), name.starts(with: folderName),
                    let id = ObjectID(hex: String(decoding: name, as: UTF8.self))
                else { continue }
                try body(id)
            }
        }
    }

    public func delete(_ id: ObjectID) throws {
        try Posix.unlink(path(for: id), in: nil)
        dirtyFolders.withLock { _ = $0.insert(folder(for: id)) }
    }

    public func flush() throws {
        let folders = dirtyFolders.withLock { folders in
            defer { folders.removeAll() }
            return folders
        }
        for folder in folders.sorted() {
            try FileHandle.open(folder, O_RDONLY | O_DIRECTORY).sync()
        }
    }
}

private func isLowercaseHex(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
}
