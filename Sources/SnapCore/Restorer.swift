import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Puts a snapshot's storage tree back into a folder, exactly: content, modes, mtimes, empty
/// folders and symlinks (as links, never followed).
///
/// Nothing is written outside the target: every path is checked before anything is written (no
/// absolute paths, no `.` or `..`, every entry's parent an earlier folder entry of the snapshot, so
/// nothing sits below a symlink), and folders are then opened one component at a time with
/// `O_NOFOLLOW`, so a symlink in the target cannot redirect a write either.
public final class Restorer {
    public struct Statistics: Sendable {
        public var files = 0
        public var directories = 0
        public var symlinks = 0
        public var bytes: UInt64 = 0
        public var removed = 0
    }

    let repository: Repository
    let snapshot: Snapshot
    let target: String
    let clean: Bool
    private var statistics = Statistics()
    private let decompressor = ZstdDecompressor()
    /// The last parent opened, by the bytes of its path: String equality would take a folder for
    /// another whose name differs only in Unicode normalization.
    private var cachedParent: (path: [UInt8], handle: FileHandle)?

    /// Set-user-ID and set-group-ID: never restored on files (see `restoreFile`).
    public static let setIDBits: UInt32 = 0o6000

    public init(repository: Repository, snapshot: Snapshot, target: String, clean: Bool) {
        self.repository = repository
        self.snapshot = snapshot
        self.target = target
        self.clean = clean
    }

    /// Whether the snapshot has a storage tree to restore.
    public static func hasStorage(_ snapshot: Snapshot) -> Bool { snapshot.record.sources.storage != nil }

    private var expected: [[UInt8]: ManifestEntry.Kind]?

    /// Checks everything that can be checked before writing: every path of the snapshot is safe,
    /// and the target is a folder that is missing or empty (unless `clean`). Throws with nothing
    /// written. `run` calls it when it has not been called.
    public func prepare() throws {
        guard expected == nil else { return }
        try checkTarget()
        expected = try validate(ManifestReader(repository: repository))
    }

    public func run() throws -> Statistics {
        try prepare()
        let reader = ManifestReader(repository: repository)
        let root = try prepareTarget()
        try refuseIfRepository(root)
        if clean { try removeExtras(in: root, prefix: [], expected: expected ?? [:]) }

        var directories: [(path: String, mode: UInt32, mtime: Int64)] = []
        try reader.forEachEntry(snapshot.record.manifest) { entry in
            switch entry.kind {
            case .database: return
            case .directory:
                directories.append((entry.path, entry.mode, entry.mtime))
                guard entry.path != "." else { return }
                let (parent, name) = try openParent(of: entry.path, root: root)
                if let existing = try Posix.status(name, in: parent), existing.kind == .directory { return }
                try Posix.makeDirectory(name, in: parent)
                statistics.directories += 1
            case .file:
                let (parent, name) = try openParent(of: entry.path, root: root)
                try restoreFile(entry, name: name, in: parent)
                statistics.files += 1
                statistics.bytes += entry.size
            case .symlink:
                let (parent, name) = try openParent(of: entry.path, root: root)
                if try Posix.status(name, in: parent) != nil { try Posix.unlink(name, in: parent) }
                try Posix.symlink(entry.target ?? "", name, in: parent)
                try Posix.setModificationTime(name, in: parent, nanoseconds: entry.mtime)
                statistics.symlinks += 1
            }
        }
        cachedParent = nil
        // Folder times last and deepest first: creating their content changed them.
        // Each through its own descriptor, opened without following a symlink: a folder swapped for
        // a link meanwhile (by whoever can write in the target) cannot send a chmod elsewhere.
        for directory in directories.reversed() {
            let folder: FileHandle
            if directory.path == "." {
                folder = root
            } else {
                let (parent, name) = try openParent(of: directory.path, root: root)
                folder = try FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: parent)
            }
            try folder.setMode(directory.mode)
            try folder.setModificationTime(nanoseconds: directory.mtime)
        }
        return statistics
    }

    // MARK: Checks before writing

    /// Every path of the tree, as bytes, with its kind; throws on any path that could escape.
    private func validate(_ reader: ManifestReader) throws -> [[UInt8]: ManifestEntry.Kind] {
        var kinds: [[UInt8]: ManifestEntry.Kind] = [:]
        var sawRoot = false
        try reader.forEachEntry(snapshot.record.manifest) { entry in
            guard entry.kind != .database else { return }
            if entry.path == "." {
                guard entry.kind == .directory, !sawRoot else {
                    throw unsafe(entry.path, "the storage root is not a single folder entry")
                }
                sawRoot = true
                return
            }
            guard sawRoot else { throw unsafe(entry.path, "it comes before the storage root") }
            let components = entry.path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            for component in components {
                let bytes = Array(component)
                if bytes.isEmpty || bytes == [0x2E] || bytes == [0x2E, 0x2E] || bytes.contains(0) {
                    throw unsafe(entry.path, "the path is not a plain relative path")
                }
            }
            let bytes = Array(entry.path.utf8)
            if let slash = bytes.lastIndex(of: UInt8(ascii: "/")) {
                let parent = Array(bytes[..<slash])
                guard kinds[parent] == .directory else {
                    let why =
                        kinds[parent] == .symlink
                        ? "it lies below the symlink \(String(decoding: parent, as: UTF8.self))"
                        : "its folder is not in the snapshot before it"
                    throw unsafe(entry.path, why)
                }
            }
            guard kinds.updateValue(entry.kind, forKey: bytes) == nil else {
                throw unsafe(entry.path, "the path appears twice")
            }
            // symlinkat would cut the target at a NUL, making a link other than the recorded one.
            if entry.kind == .symlink, entry.target?.utf8.contains(0) ?? true {
                throw unsafe(entry.path, "its link target is missing or holds a NUL byte")
            }
            // Every object is there before anything is removed or written: a `--clean` restore
            // that stopped at a missing object would leave the folder half deleted.
            if let missing = try entry.chunks.first(where: { try !repository.store.contains($0) }) {
                throw SnapError(
                    .notFound,
                    "cannot restore snapshot \(snapshot.shortID): object \(missing.hex) of '\(entry.path)' is missing from the repository; nothing was written; run `snap check`"
                )
            }
        }
        return kinds
    }

    private func unsafe(_ path: String, _ why: String) -> SnapError {
        SnapError(
            .unsafePath,
            "refusing to restore snapshot \(snapshot.shortID): entry '\(path)' is unsafe (\(why)); nothing was written")
    }

    /// Refuses a target that is not a folder, or a non-empty one unless `clean`, or one that holds
    /// the repository or lies inside it (a `--clean` restore would delete the repository).
    private func checkTarget() throws {
        guard let repositoryPath = Posix.resolvedPath(repository.path), let targetPath = Posix.resolvedPath(target)
        else {
            throw SnapError(
                .invalidInput,
                "cannot tell where restore target \(target) lies (a '..' below a folder that does not exist yet?); name the folder plainly"
            )
        }
        if targetPath == repositoryPath
            || repositoryPath.hasPrefix(targetPath.hasSuffix("/") ? targetPath : targetPath + "/")
            || targetPath.hasPrefix(repositoryPath + "/")
        {
            throw SnapError(
                .invalidInput,
                "restore target \(target) holds the repository \(repository.path) or lies inside it; restore to a folder outside the repository"
            )
        }
        guard let status = try Posix.status(target, in: nil) else { return }
        guard status.kind == .directory else {
            throw SnapError(.invalidInput, "restore target \(target) is not a folder; name a new or empty folder")
        }
        if !clean, try !Posix.listDirectory(try FileHandle.open(target, O_RDONLY | O_DIRECTORY)).isEmpty {
            throw SnapError(
                .invalidInput,
                "restore target \(target) is not empty; name a new or empty folder, or pass --clean to make it mirror the snapshot"
            )
        }
    }

    /// Opens the target, creating it when missing.
    private func prepareTarget() throws -> FileHandle {
        if try Posix.status(target, in: nil) == nil { try Repository.makeDirectories(target) }
        return try FileHandle.open(target, O_RDONLY | O_DIRECTORY)
    }

    /// `--clean`: removes what the snapshot does not have, and entries whose kind differs. Works
    /// on names as the folder lists them: one that is not UTF-8 cannot be in a snapshot, and goes.
    private func removeExtras(in directory: FileHandle, prefix: [UInt8], expected: [[UInt8]: ManifestEntry.Kind]) throws
    {
        for name in try Posix.listDirectory(directory) {
            let path = prefix.isEmpty ? name : prefix + [UInt8(ascii: "/")] + name
            guard let status = try Posix.status(name, in: directory) else { continue }
            let kind: ManifestEntry.Kind? =
                switch status.kind {
                case .directory: .directory
                case .regular: .file
                case .symlink: .symlink
                case .other: nil
                }
            if let kind, expected[path] == kind {
                if kind == .directory {
                    let child = try FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: directory)
                    try refuseIfRepository(child)
                    try removeExtras(in: child, prefix: path, expected: expected)
                }
                continue
            }
            try removeTree(name, in: directory, kind: status.kind)
        }
    }

    private func removeTree(_ name: [UInt8], in directory: FileHandle, kind: FileStatus.Kind) throws {
        if kind == .directory {
            let child = try FileHandle.open(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: directory)
            try refuseIfRepository(child)
            for inner in try Posix.listDirectory(child) {
                guard let status = try Posix.status(inner, in: child) else { continue }
                try removeTree(inner, in: child, kind: status.kind)
            }
            try Posix.unlink(name, in: directory, directory: true)
        } else {
            try Posix.unlink(name, in: directory)
        }
        statistics.removed += 1
    }

    /// The repository's folder and every folder above it, by device and inode: what a restore
    /// must never write into or remove, however it is reached (a symlink, a bind mount).
    private lazy var repositoryLineage: Set<[UInt64]> = {
        var lineage = Set<[UInt64]>()
        guard var current = try? FileHandle.open(repository.path, O_RDONLY | O_DIRECTORY) else { return lineage }
        while let status = try? current.status(), lineage.insert([status.device, status.inode]).inserted,
            let parent = try? FileHandle.open("..", O_RDONLY | O_DIRECTORY, at: current)
        {
            current = parent
        }
        return lineage
    }()

    /// Refuses a folder of the target that is the repository or holds it (a bind mount of it, say).
    private func refuseIfRepository(_ folder: FileHandle) throws {
        let status = try folder.status()
        guard repositoryLineage.contains([status.device, status.inode]) else { return }
        throw SnapError(
            .invalidInput,
            "restore target \(target) reaches the repository \(repository.path) through \(folder.path) (a bind mount?); restore to a folder outside the repository"
        )
    }

    // MARK: Writing

    /// The folder that holds `path`, opened component by component without following symlinks.
    ///
    /// Split at `/` bytes, as the kernel and `validate` do: a `/` followed by a combining mark is
    /// one Character, which a split by Characters would leave inside a component.
    private func openParent(of path: String, root: FileHandle) throws -> (FileHandle, String) {
        let bytes = Array(path.utf8)
        guard let slash = bytes.lastIndex(of: UInt8(ascii: "/")) else { return (root, path) }
        let parentPath = Array(bytes[..<slash])
        let name = String(decoding: bytes[(slash + 1)...], as: UTF8.self)
        if let cachedParent, cachedParent.path == parentPath { return (cachedParent.handle, name) }
        var current = root
        for component in bytes[..<slash].split(separator: UInt8(ascii: "/")) {
            do {
                current = try FileHandle.open(Array(component), O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: current)
            } catch {
                throw SnapError(
                    .unsafePath,
                    "cannot restore \(path): \(String(decoding: parentPath, as: UTF8.self)) in the target is not a plain folder",
                    cause: (error as? SnapError)?.cause)
            }
        }
        cachedParent = (parentPath, current)
        return (current, name)
    }

    /// Writes into a temporary name, then renames: a `--clean` restore never leaves a file half old.
    private func restoreFile(_ entry: ManifestEntry, name: String, in parent: FileHandle) throws {
        let temporary = ".snap-restore-" + Posix.randomHex(6)
        let handle = try FileHandle.open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600, at: parent)
        do {
            var written: UInt64 = 0
            for id in entry.chunks {
                let content = try repository.loadObject(id, decompressor: decompressor)
                try handle.writeAll(content)
                written += UInt64(content.count)
            }
            guard written == entry.size else {
                throw SnapError(
                    .corrupt,
                    "\(entry.path): the snapshot's chunks hold \(written) bytes, the manifest says \(entry.size)")
            }
            // Owners are not recorded, so the file belongs to whoever restores it: a setuid or
            // setgid bit planted by the folder's user would make, restored as root, a root program.
            try handle.setMode(entry.mode & ~Self.setIDBits)
            try handle.setModificationTime(nanoseconds: entry.mtime)
            try Posix.rename(temporary, name, in: parent)
        } catch {
            unlinkat(parent.fd, temporary, 0)
            throw error
        }
    }
}
