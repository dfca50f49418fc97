import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A running database dump whose bytes snap reads like a pipe.
///
/// The PostgreSQL adapter implements it around `pg_dump`; the core only needs the bytes, the facts
/// to record, and to learn at the end whether the dump succeeded.
public protocol DatabaseDump: AnyObject {
    /// Facts describing exactly the dumped state.
    var facts: DatabaseFacts { get }
    /// Reads up to `buffer.count` bytes of the dump; 0 at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Waits for the dump to end; throws when it failed, so that no snapshot is recorded.
    func finish() throws
    /// Ends the session without dumping: the parent snapshot's dump is reused.
    func skip()
}

/// How far a running snapshot has got, for a progress display. The dump and the storage tree
/// are read side by side, so both advance at once.
public struct SnapshotProgress: Sendable {
    /// Bytes of the database dump read so far.
    public var databaseBytes: UInt64 = 0
    /// The database's size when a dump is streaming (pg_dump's output is usually a little
    /// smaller); nil otherwise.
    public var expectedDatabaseBytes: UInt64?
    /// True while pg_dump's output is being read.
    public var dumping = false
    /// Whether the snapshot reads a storage folder.
    public var hasStorage = false
    /// Files of the storage folder done so far, and their bytes.
    public var files = 0
    public var storageBytes: UInt64 = 0
    /// Uncompressed bytes found new so far, both parts.
    public var newBytes: UInt64 = 0
}

/// What to put into a new snapshot.
public struct SnapshotOptions {
    public var storage: String?
    public var tags: [String]
    /// Dump even when the database provably has not changed since the last snapshot of it.
    public var forceDump = false
    public var host: String
    public var program: String

    /// This machine's host name.
    public static var localHost: String { Posix.hostName() }

    public init(storage: String?, tags: [String], host: String = SnapshotOptions.localHost, program: String) {
        self.storage = storage
        self.tags = tags
        self.host = host
        self.program = program
    }
}

/// Builds one snapshot: the database dump stream (when given) and the storage tree, read side by
/// side on two threads, then the manifest (database entry first), and last the record that
/// commits it all.
public final class SnapshotBuilder {
    let repository: Repository
    let options: SnapshotOptions
    private var filesCache: FilesCache?
    /// Called with each problem as it is found (a file that cannot be read, say). Never called
    /// at the same time as itself or `onProgress`.
    public var onWarning: (String) -> Void = { _ in }
    /// Called after every chunk and file; keep it cheap. Never called at the same time as itself
    /// or `onWarning`, but from either reading thread.
    public var onProgress: (SnapshotProgress) -> Void = { _ in }
    private var reporter = Reporter()
    /// The problems the last run met (files it could not read, ...), also those the record does
    /// not list past its first thousand.
    public var problemCount: Int { reporter.count }
    /// Set when the snapshot is abandoned: the storage walk stops at its next entry.
    private let cancelled = Atomic<Bool>(false)

    public init(repository: Repository, options: SnapshotOptions) {
        self.repository = repository
        self.options = options
    }

    /// Checks the inputs before anything is read or written.
    public static func validateStorage(_ path: String) throws -> String {
        guard let status = try? Posix.status(path, in: nil) else {
            throw SnapError(
                .invalidInput, "storage folder \(path) does not exist; pass an existing folder with --storage")
        }
        let absolute = path.hasPrefix("/") ? path : join(FileManager.default.currentDirectoryPath, path)
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard realpath(absolute, &resolved) != nil else {
            throw SnapError(.io, "cannot resolve storage folder \(path)", cause: Errno(errno))
        }
        let kind =
            status.kind == .symlink
            ? try FileHandle.open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY).status().kind : status.kind
        guard kind == .directory else {
            throw SnapError(.invalidInput, "storage path \(path) is not a folder; pass a folder with --storage")
        }
        return resolved.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// `validateStorage`, and refuses a storage folder that holds the repository (found by
    /// device and inode, so no symlink or bind mount hides it): the snapshot would store the
    /// repository into itself, growing with every run. A bind mount of the repository deeper in
    /// the folder is found by the walk, which then records nothing.
    public static func validateStorage(_ path: String, repository: Repository) throws -> String {
        let storage = try validateStorage(path)
        let lineage = RepositoryLineage(repository.path)
        if let status = try? FileHandle.open(storage, O_RDONLY | O_DIRECTORY).status(),
            lineage.holdsRepository(FolderIdentity(status))
        {
            throw holdsRepository(path, repository, at: nil)
        }
        return storage
    }

    /// Runs the snapshot and commits it. Throws (recording nothing) when the dump fails or the
    /// repository cannot be written; per-file read errors are recorded in the snapshot instead.
    public func run(dump: DatabaseDump? = nil) throws -> Snapshot {
        // A snapshot is dated when it starts: the dump's transaction and the file walk begin then.
        let started = Timestamp.now()
        cancelled.store(false, ordering: .relaxed)
        let storage = try options.storage.map { try Self.validateStorage($0, repository: repository) }
        reporter = Reporter(onWarning: onWarning, onProgress: onProgress)
        reporter.update { $0.hasStorage = storage != nil }
        let writer = try SnapshotWriter(repository: repository)
        let storageWriter = writer.makePart()
        let cache = storage.map { FilesCache(repository: repository, storage: $0, started: started) }
        filesCache = cache

        var reusedFrom: String?
        var reusedParent: Snapshot?
        if let dump, !options.forceDump, let (parent, entry) = try unchangedDump(dump.facts, writer: writer) {
            dump.skip()
            reusedFrom = parent.id
            reusedParent = parent
            // The entry as it was, time included: it is the same dump, taken then.
            try writer.append(entry)
            if let storage { try walkStorage(storage, writer: storageWriter) }
        } else if let dump {
            // The dump's snapshot was taken when its session opened, before this: every file a
            // committed row of the dump points to was in the folder before the walk starts, so
            // the folder may be read while the dump streams.
            let walk = storage.map { storage in
                BackgroundWork { [self] in try walkStorage(storage, writer: storageWriter) }
            }
            do {
                try storeDump(dump, started: started, writer: writer, stopIf: walk)
            } catch {
                cancelled.store(true, ordering: .relaxed)
                _ = try? walk?.wait()
                throw error
            }
            try walk?.wait()
        } else if let storage {
            try walkStorage(storage, writer: storageWriter)
        }
        var facts = dump?.facts
        if let reusedParent {
            // The same dump, so the same layout; this session streamed nothing to learn it from.
            facts?.tableData = reusedParent.record.sources.database?.tableData
        }
        let snapshot = try writer.commit(
            time: started, host: options.host, tags: options.tags, program: options.program,
            sources: .init(storage: storage, database: facts, databaseReusedFrom: reusedFrom),
            errors: reporter.errors, parts: [storageWriter])
        cache?.save()
        return snapshot
    }

    /// Streams pg_dump's output into the store and appends its entry. Stops early when `walk`
    /// (the storage tree read alongside) failed, with its error.
    private func storeDump(
        _ dump: DatabaseDump, started: Timestamp, writer: SnapshotWriter, stopIf walk: BackgroundWork<Void>?
    ) throws {
        reporter.update {
            $0.dumping = true
            $0.expectedDatabaseBytes = UInt64(max(0, dump.facts.sizeBytes))
        }
        writer.onChunk = { [reporter, unowned writer] in
            let (bytes, new) = (writer.bytesSeen, writer.newBytes)
            reporter.update {
                $0.databaseBytes = bytes
                $0.newBytes = new
            }
        }
        // No read-ahead thread: pg_dump writes into a 1 MiB pipe, so it runs ahead while this
        // thread chunks and hashes (a separate reading thread measured no faster).
        let stream = try writer.storeStream(.database) { buffer in
            if let failure = walk?.failure { throw failure }
            return try dump.read(into: buffer)
        }
        try dump.finish()
        reporter.update { $0.dumping = false }
        guard stream.size > 0 else {
            throw SnapError(.invalidInput, "pg_dump produced no output; no snapshot was recorded")
        }
        try writer.append(
            ManifestEntry(
                kind: .database, path: "database.dump", mode: 0o600, mtime: started.nanoseconds,
                size: stream.size, chunks: stream.chunks))
    }

    /// The newest snapshot of the same database whose dump is provably still exact
    /// (`DatabaseFacts.provesSameState`), and its dump entry. Every chunk of that dump must also
    /// still be in the repository (else dumping again stores what is missing).
    private func unchangedDump(_ facts: DatabaseFacts, writer: SnapshotWriter) throws -> (Snapshot, ManifestEntry)? {
        let parent = try repository.snapshots().snapshots.last { snapshot in
            snapshot.record.sources.database.map(facts.provesSameState) ?? false
        }
        guard let parent,
            let entry = try ManifestReader(repository: repository).databaseEntry(parent.record.manifest),
            entry.chunks.allSatisfy(writer.has)
        else { return nil }
        return (parent, entry)
    }

    // MARK: Storage tree

    /// Walks the tree depth first, without recursion: one `FolderStack` level per folder, so
    /// memory, time and descriptors do not grow with depth beyond the names of the folders being
    /// walked (a tree ten thousand folders deep crashed the recursive walk, whose every level also
    /// copied the set of its ancestors and the path).
    private func walkStorage(_ root: String, writer: SnapshotWriter) throws {
        writer.onChunk = { [reporter, unowned writer] in
            let (bytes, new) = (writer.bytesSeen, writer.newBytes)
            reporter.update {
                $0.storageBytes = bytes
                $0.newBytes = new
            }
        }
        let rootHandle = try FileHandle.open(root, O_RDONLY | O_DIRECTORY)
        let status = try rootHandle.status()
        try writer.append(
            ManifestEntry(kind: .directory, path: ".", mode: status.mode, mtime: status.mtimeNanoseconds))
        guard let names = listFolder(rootHandle, path: []) else { return }
        var stack = FolderStack(
            root: rootHandle, identity: FolderIdentity(status), payload: FolderListing(names: names))
        let repositoryFolder = RepositoryLineage(repository.path).repository
        while true {
            if cancelled.load(ordering: .relaxed) { throw SnapError(.io, "the snapshot was abandoned") }
            guard let directory = stack.top, stack.payload.next < stack.payload.names.count else {
                if stack.depth == 0 { return }
                do {
                    _ = try stack.pop()
                } catch {
                    // The rest of the folder above cannot be read: skip it, and try the next one up.
                    warn("\(reason(error)); the rest of its content is missing from the snapshot")
                }
                continue
            }
            let rawName = stack.payload.names[stack.payload.next]
            stack.payload.next += 1
            let rawPath = stack.path(of: rawName)
            guard let path = String(validating: rawPath, as: UTF8.self) else {
                let shown = String(decoding: rawPath, as: UTF8.self)
                warn("\(shown): the name is not valid UTF-8; skipped (rename it to back it up)")
                continue
            }
            let status: FileStatus
            do {
                guard let found = try Posix.status(rawName, in: directory) else { continue }  // gone since the listing
                status = found
            } catch {
                warn("\(path): cannot read its attributes (\(reason(error))); skipped")
                continue
            }
            switch status.kind {
            case .directory:
                // The folder is recorded even when its content cannot be read (FORMAT §7.3).
                try writer.append(
                    ManifestEntry(kind: .directory, path: path, mode: status.mode, mtime: status.mtimeNanoseconds))
                if FolderIdentity(status) == repositoryFolder {
                    throw Self.holdsRepository(options.storage ?? root, repository, at: path)
                }
                guard !stack.holds(FolderIdentity(status)) else {
                    warn("\(path): the folder is one of its own ancestors (a bind mount?); its content is skipped")
                    continue
                }
                let child: FileHandle
                let childStatus: FileStatus
                do {
                    child = try FileHandle.open(rawName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, at: directory)
                    childStatus = try child.status()
                } catch {
                    warn("\(path): cannot open the folder (\(reason(error))); its content is missing from the snapshot")
                    continue
                }
                guard let names = listFolder(child, path: rawPath) else { continue }
                stack.push(
                    rawName, handle: child, identity: FolderIdentity(childStatus), payload: FolderListing(names: names))
            case .regular:
                guard let entry = try readFile(rawName, path: path, in: directory, writer: writer)
                else { continue }
                try writer.append(entry)
                reporter.update { $0.files += 1 }
            case .symlink:
                do {
                    let target = try Posix.readLink(String(decoding: rawName, as: UTF8.self), in: directory)
                    try writer.append(
                        ManifestEntry(
                            kind: .symlink, path: path, mode: status.mode, mtime: status.mtimeNanoseconds,
                            target: target))
                } catch {
                    warn("\(path): cannot read the link (\(reason(error))); skipped")
                }
            case .other:
                warn("\(path): not a regular file, folder or symlink (a socket, FIFO or device); skipped")
            }
        }
    }

    private func warn(_ message: String) { reporter.warn(message) }

    /// The folder's names in manifest order, or nil (with a warning) when it cannot be listed.
    private func listFolder(_ folder: FileHandle, path: [UInt8]) -> [[UInt8]]? {
        do {
            // Byte order, not String order: two names that Unicode calls equal are still two files.
            return try Posix.listDirectory(folder).sorted { $0.lexicographicallyPrecedes($1) }
        } catch {
            warn(
                "\(display(String(decoding: path, as: UTF8.self))): cannot list the folder (\(reason(error))); its content is missing from the snapshot"
            )
            return nil
        }
    }

    private static func holdsRepository(_ storage: String, _ repository: Repository, at path: String?) -> SnapError {
        let place = path.map { " (as \($0))" } ?? ""
        return SnapError(
            .invalidInput,
            "storage folder \(storage) holds the repository \(repository.path)\(place), which a snapshot would store into itself; keep the repository outside the storage folder, or back up a folder that does not hold it; nothing was recorded"
        )
    }

    /// The file's entry, or nil (with a warning) when it cannot be read. Read errors in the middle
    /// of a file leave its chunks stored but no entry: a partial file is never recorded as whole.
    /// A file that changes while it is read is read again, once; if it changed again, what was
    /// read is recorded with a warning.
    private func readFile(_ name: [UInt8], path: String, in directory: FileHandle, writer: SnapshotWriter) throws
        -> ManifestEntry?
    {
        let handle: FileHandle
        var status: FileStatus
        do {
            // O_NONBLOCK: a FIFO swapped in since the listing must not hang the walk on `open`.
            handle = try FileHandle.open(name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, at: directory)
            status = try handle.status()
        } catch {
            if let error = error as? SnapError, let cause = error.cause as? Errno, cause.rawValue == ENOENT {
                return nil  // deleted since the listing: nothing to back up
            }
            warn("\(path): cannot open the file (\(reason(error))); skipped")
            return nil
        }
        guard status.kind == .regular else {
            warn("\(path): became something other than a regular file while the folder was read; skipped")
            return nil
        }
        if let chunks = filesCache?.lookup(path, status, known: writer.has) {
            writer.filesUnchanged += 1
            filesCache?.record(path, status, chunks: chunks)
            return ManifestEntry(
                kind: .file, path: path, mode: status.mode, mtime: status.mtimeNanoseconds, size: status.size,
                chunks: chunks)
        }
        for attempt in 1...2 {
            var readFailure: (any Error)?
            let stream: StreamReference
            do {
                stream = try writer.storeStream(.files) { buffer in
                    // A failed dump stops the walk within a read, not at the end of a large file.
                    if self.cancelled.load(ordering: .relaxed) { throw SnapError(.io, "the snapshot was abandoned") }
                    do { return try handle.read(into: buffer) } catch {
                        readFailure = error
                        throw error
                    }
                }
            } catch {
                guard let readFailure else { throw error }  // a repository write failed: abort the snapshot
                warn("\(path): cannot read the file (\(reason(readFailure))); skipped")
                return nil
            }
            let after = try? handle.status()
            let unchanged =
                stream.size == status.size && after?.mtimeNanoseconds == status.mtimeNanoseconds
                && after?.ctimeNanoseconds == status.ctimeNanoseconds
            if unchanged {
                filesCache?.record(path, status, chunks: stream.chunks)
            } else if attempt == 1, let after, lseek(handle.fd, 0, SEEK_SET) == 0 {
                status = after
                continue
            } else {
                // Not remembered in the cache either: the next snapshot reads it again.
                warn("\(path): changed while it was read, twice; recorded as read, which may mix old and new content")
            }
            return ManifestEntry(
                kind: .file, path: path, mode: status.mode, mtime: status.mtimeNanoseconds, size: stream.size,
                chunks: stream.chunks)
        }
        return nil
    }

    private func display(_ path: String) -> String { path.isEmpty ? "." : path }

    private func reason(_ error: any Error) -> String {
        if let error = error as? SnapError, let cause = error.cause { return "\(cause)" }
        return "\(error)"
    }
}

/// What the two reading threads share, behind one lock. The callbacks run under it, so the
/// caller's never run at once.
private final class Reporter: @unchecked Sendable {
    private let lock = NSLock()
    private var progress = SnapshotProgress()
    private var warnings: [String] = []
    private let onWarning: (String) -> Void
    private let onProgress: (SnapshotProgress) -> Void

    init(onWarning: @escaping (String) -> Void = { _ in }, onProgress: @escaping (SnapshotProgress) -> Void = { _ in })
    {
        self.onWarning = onWarning
        self.onProgress = onProgress
    }

    /// The record lists this many problems at most, and counts the rest: a folder of a million
    /// unreadable files must not make a record every `snap list` reads of a hundred megabytes.
    static let recordedLimit = 1000
    private var unrecorded = 0

    /// Every problem met, listed in the record or not.
    var count: Int { lock.withLock { warnings.count + unrecorded } }

    var errors: [String] {
        lock.withLock {
            warnings + (unrecorded > 0 ? ["\(unrecorded) more problem(s) like these, not listed"] : [])
        }
    }

    func warn(_ message: String) {
        lock.withLock {
            if warnings.count < Self.recordedLimit { warnings.append(message) } else { unrecorded += 1 }
            onWarning(message)
        }
    }

    func update(_ change: (inout SnapshotProgress) -> Void) {
        lock.withLock {
            change(&progress)
            onProgress(progress)
        }
    }
}
