import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A snap repository on disk: its config, object store and snapshot records.
public final class Repository: Sendable {
    public let path: String
    public let config: RepositoryConfig
    public let store: any ObjectStore
    /// Who the repository belongs to: what root creates in it is given to that user.
    public let owner: RepositoryOwner

    var snapshotsPath: String { join(path, "snapshots") }
    var objectsPath: String { join(path, "objects") }

    /// `store` stands in for the folder's object store (tests watch what a writer asks of it).
    init(path: String, config: RepositoryConfig, owner: RepositoryOwner, store: (any ObjectStore)? = nil) {
        self.path = path
        self.config = config
        self.owner = owner
        self.store = store ?? LocalObjectStore(root: join(path, "objects"), owner: owner)
    }

    /// Creates an empty repository; refuses a folder that holds one already or anything else.
    public static func initialize(at path: String, config: RepositoryConfig = .makeDefault()) throws -> Repository {
        try config.validate(path: path)
        if let status = try Posix.status(path, in: nil) {
            guard status.kind == .directory else {
                throw SnapError(.invalidInput, "\(path) exists and is not a folder; choose another repository path")
            }
            if try Posix.status(join(path, "config"), in: nil) != nil {
                throw SnapError(
                    .repositoryExists, "a repository exists already at \(path); use it, or choose another path")
            }
            let folder = try FileHandle.open(path, O_RDONLY | O_DIRECTORY)
            guard try Posix.listDirectory(folder).isEmpty else {
                throw SnapError(.invalidInput, "\(path) is not empty; create the repository in a new or empty folder")
            }
        } else {
            try makeDirectories(path)
        }
        // An existing empty folder may belong to someone else: the repository is theirs then.
        let owner = try RepositoryOwner(of: path)
        try owner.checkWriter()
        try FileHandle.open(path, O_RDONLY | O_DIRECTORY).setMode(0o700)
        try owner.makeFolder(join(path, "objects"))
        try owner.makeFolder(join(path, "snapshots"))
        // The lock file exists from the start, so that the layout never changes under readers.
        try owner.adopt(try FileHandle.open(join(path, "lock"), O_WRONLY | O_CREAT | O_NOFOLLOW, mode: 0o600))
        // The config goes last: a folder without it is not a repository, so a failed init leaves
        // nothing that later commands would mistake for one.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try writeFileAtomically(
            join(path, "config"), Array(try encoder.encode(config)) + [0x0A], replace: false, owner: owner)
        return Repository(path: path, config: config, owner: owner)
    }

    /// Opens an existing repository, checking that this build can read its format.
    public static func open(at path: String) throws -> Repository {
        let configPath = join(path, "config")
        // The folder's owner first: a config the system will not let this user read is a
        // permission error to explain, not a missing repository.
        let owner = try? RepositoryOwner(of: path)
        let status: FileStatus?
        do {
            status = try Posix.status(configPath, in: nil)
        } catch {
            throw owner?.explain(error) ?? error
        }
        guard let owner, let status, status.kind == .regular else {
            let reason = owner == nil ? "does not exist" : "has no config file"
            throw SnapError(
                .notARepository,
                "\(path) is not a snap repository (it \(reason)); create one with `snap init` or pass --repo"
            )
        }
        let bytes = try owner.explaining { try FileHandle.open(configPath, O_RDONLY).readAll() }
        let config: RepositoryConfig
        do {
            config = try JSONDecoder().decode(RepositoryConfig.self, from: Data(bytes))
        } catch {
            throw SnapError(
                .notARepository, "\(configPath) is not a valid snap config; restore it from a copy of the repository")
        }
        try config.validate(path: path)
        return Repository(path: path, config: config, owner: owner)
    }

    // MARK: Objects

    /// The uncompressed content of an object, verified against its name.
    public func loadObject(_ id: ObjectID, decompressor: ZstdDecompressor) throws -> [UInt8] {
        switch try decodeObject(id, decompressor: decompressor) {
        case .success(let content): return content
        case .failure(let damage):
            throw SnapError(
                .corrupt,
                "object \(id.hex) is damaged (\(damage.reason)); `snap check --read-data` lists what it affects")
        }
    }

    /// Why a stored object cannot be used.
    struct Damage: Error { var reason: String }

    /// Reads and verifies an object; damage is a value, failures to read at all are thrown.
    func decodeObject(_ id: ObjectID, decompressor: ZstdDecompressor) throws -> Result<[UInt8], Damage> {
        let encoded = try store.get(id)
        let content: [UInt8]
        do {
            content = try encoded.withUnsafeBytes { try decompressor.decompress($0, limit: maxObjectSize) }
        } catch let error as SnapError {
            return .failure(Damage(reason: error.message))
        }
        guard ObjectID(hashing: content) == id else {
            return .failure(Damage(reason: "its content does not match its name"))
        }
        return .success(content)
    }

    /// No chunk of any stream kind is larger than this.
    var maxObjectSize: Int {
        max(config.chunker.files.maxSize, config.chunker.database.maxSize, config.chunker.tree.maxSize)
    }

    // MARK: Snapshots

    /// Every snapshot record that parses, oldest first, and a message for each that does not.
    public func snapshots() throws -> (snapshots: [Snapshot], problems: [String]) {
        let folder = try owner.explaining { try FileHandle.open(snapshotsPath, O_RDONLY | O_DIRECTORY) }
        var snapshots: [Snapshot] = []
        var problems: [String] = []
        for rawName in try Posix.listDirectory(folder) {
            let name = String(decoding: rawName, as: UTF8.self)
            guard name.hasSuffix(".json"), !name.hasPrefix(".") else {
                if !name.hasPrefix(LocalObjectStore.temporaryPrefix) {
                    problems.append("snapshots/\(name) is not a snapshot record; move it out of the repository")
                }
                continue
            }
            let id = String(name.dropLast(5))
            do {
                let bytes = try FileHandle.open(name, O_RDONLY, at: folder).readAll()
                let record: SnapshotRecord
                do {
                    record = try SnapshotRecord.decode(bytes)
                } catch {
                    throw SnapError(.corrupt, "snapshot record snapshots/\(name) is damaged (it does not parse)")
                }
                guard record.version <= SnapshotRecord.currentVersion else {
                    throw SnapError(
                        .unsupportedFormat,
                        "snapshot record snapshots/\(name) has format version \(record.version), newer than this snap supports; upgrade snap"
                    )
                }
                guard ObjectID(hashing: bytes).hex == id else {
                    throw SnapError(
                        .corrupt, "snapshot record snapshots/\(name) is damaged (its content does not match its name)")
                }
                snapshots.append(Snapshot(id: id, record: record))
            } catch {
                problems.append("\(owner.explain(error))")
            }
        }
        snapshots.sort { ($0.record.time, $0.id) < ($1.record.time, $1.id) }
        return (snapshots, problems.sorted())
    }

    /// Finds a snapshot by full id, unique prefix of at least 4 hex digits, or `latest`.
    public func resolve(_ reference: String) throws -> Snapshot {
        let all = try snapshots().snapshots
        if reference == "latest" {
            guard let last = all.last else {
                throw SnapError(
                    .notFound, "the repository at \(path) has no snapshots yet; take one with `snap snapshot`")
            }
            return last
        }
        let prefix = reference.lowercased()
        guard prefix.count >= 4, prefix.count <= 64, prefix.utf8.allSatisfy({ hexValue($0) != nil }) else {
            throw SnapError(.invalidInput, "'\(reference)' is not a snapshot id: give 4 to 64 hex digits or `latest`")
        }
        let matches = all.filter { $0.id.hasPrefix(prefix) }
        switch matches.count {
        case 1: return matches[0]
        case 0: throw SnapError(.notFound, "no snapshot id starts with \(prefix); `snap list` shows them")
        default:
            let candidates = matches.map { "\($0.id) (\($0.record.time.iso8601Seconds))" }.joined(separator: ", ")
            throw SnapError(.ambiguous, "snapshot id prefix \(prefix) is ambiguous: \(candidates); give more digits")
        }
    }

    /// Writes a record as `snapshots/<id>.json` atomically. This is the commit point: call it only
    /// once every object the record reaches is durable.
    public func commit(_ record: SnapshotRecord) throws -> Snapshot {
        // Every object stored so far becomes durable before the record that may need it.
        try store.flush()
        let bytes = try record.encoded()
        let id = ObjectID(hashing: bytes).hex
        FaultInjection.step()
        try owner.explaining {
            try Repository.writeFileAtomically(join(snapshotsPath, id + ".json"), bytes, owner: owner)
        }
        return Snapshot(id: id, record: record)
    }

    /// Removes temporary files that interrupted runs left (names starting with `.tmp-`) in the
    /// repository folder, `snapshots/` and `objects/XX/`. Only safe under the exclusive lock.
    func removeLeftovers(dryRun: Bool) throws -> Int {
        try owner.explaining {
            var removed = 0
            var folders = [path, snapshotsPath]
            let objects = try FileHandle.open(objectsPath, O_RDONLY | O_DIRECTORY)
            // Object folders only: a stray two-letter file there is reported by `check`, not an error here.
            for name in try Posix.listDirectory(objects) where name.count == 2 {
                if try Posix.status(name, in: objects)?.kind == .directory {
                    folders.append(join(objectsPath, String(decoding: name, as: UTF8.self)))
                }
            }
            for folder in folders {
                let handle = try FileHandle.open(folder, O_RDONLY | O_DIRECTORY)
                for raw in try Posix.listDirectory(handle) {
                    let name = String(decoding: raw, as: UTF8.self)
                    guard name.hasPrefix(LocalObjectStore.temporaryPrefix) else { continue }
                    if !dryRun { try Posix.unlink(name, in: handle) }
                    removed += 1
                }
            }
            return removed
        }
    }

    /// Calls `object` with every object name, and returns the paths (relative to the repository)
    /// of files that are not part of the format, from one walk of the store; temporary files of
    /// interrupted runs are neither.
    func scanObjects(_ object: (ObjectID) throws -> Void) throws -> [String] {
        try owner.explaining {
            var foreign: [String] = []
            let known: Set<String> = ["config", "lock", "objects", "snapshots"]
            for raw in try Posix.listDirectory(try FileHandle.open(path, O_RDONLY | O_DIRECTORY)) {
                let name = String(decoding: raw, as: UTF8.self)
                if !known.contains(name) && !name.hasPrefix(LocalObjectStore.temporaryPrefix) { foreign.append(name) }
            }
            if let local = store as? LocalObjectStore {
                try local.scan(object: object, other: { foreign.append("objects/" + $0) })
            } else {
                try store.list(object)
            }
            return foreign.sorted()
        }
    }

    /// Deletes snapshot records (forget). Their objects stay until `prune`. Only under the
    /// exclusive lock.
    public func forget(_ ids: [String]) throws {
        guard !ids.isEmpty else { return }
        try owner.explaining {
            let folder = try FileHandle.open(snapshotsPath, O_RDONLY | O_DIRECTORY)
            for id in ids {
                try Posix.unlink(id + ".json", in: folder)
                FaultInjection.step()
            }
            try folder.sync()
        }
    }

    // MARK: Files

    /// Temporary file in the same folder (given to `owner` when root writes another user's
    /// repository), fsync, rename (or, with `replace: false`, link, which fails rather than
    /// replaces an existing file), fsync the folder.
    static func writeFileAtomically(_ path: String, _ bytes: [UInt8], replace: Bool = true, owner: RepositoryOwner)
        throws
    {
        let slash = path.lastIndex(of: "/")
        let folder = slash.map { String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = join(folder, LocalObjectStore.temporaryPrefix + name + "-" + Posix.randomHex(6))
        do {
            let handle = try FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            try owner.adopt(handle)
            try handle.writeAll(bytes)
            try handle.sync()
            if replace {
                try Posix.rename(temporary, path, in: nil)
            } else {
                guard link(temporary, path) == 0 else {
                    let failure = errno
                    if failure == EEXIST {
                        throw SnapError(.repositoryExists, "\(path) exists already; nothing was changed")
                    }
                    throw SnapError(.io, "cannot create \(path)", cause: Errno(failure))
                }
                unlink(temporary)
            }
        } catch {
            unlink(temporary)
            throw error
        }
        try FileHandle.open(folder.isEmpty ? "/" : folder, O_RDONLY | O_DIRECTORY).sync()
    }

    /// `mkdir -p` with 0700 folders.
    static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            current = join(current, String(component))
            try Posix.ensureDirectory(current, in: nil)
        }
    }
}
