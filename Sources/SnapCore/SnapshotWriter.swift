/// Writes one snapshot: stores streams as chunks, collects the manifest, and commits the record.
///
/// Both ways of making a snapshot use it: reading a database dump and a storage folder
/// (`SnapshotBuilder`), and importing a classic tar.gz. Entries must be appended in manifest order
/// (the database first, then the storage tree depth-first with names sorted by their bytes).
///
/// One thread per writer. To fill two parts of a snapshot at once (the dump on one thread, the
/// storage tree on another), take a second writer from `makePart()` and pass it to `commit`: its
/// entries follow this writer's in the manifest.
public final class SnapshotWriter {
    /// Which chunker parameters a stream is cut with.
    public enum StreamKind: Sendable {
        case files
        case database
    }

    let repository: Repository
    private let objects: ObjectWriter
    private let manifest: ManifestWriter
    private var chunkers: [StreamKind: StreamChunker] = [:]
    private var totals = SnapshotRecord.Totals()
    /// Files taken from the files cache instead of being read.
    var filesUnchanged = 0
    /// Bytes of every stream stored so far (new or not).
    public private(set) var bytesSeen: UInt64 = 0
    /// Called after each chunk is stored, on the calling thread.
    public var onChunk: () -> Void = {}

    /// Uncompressed bytes of the chunks found new so far.
    public var newBytes: UInt64 { objects.newBytes }

    /// A writer for a new snapshot. It asks the store about each chunk rather than loading every
    /// object name, so its memory and start-up do not grow with the repository.
    public convenience init(repository: Repository) throws {
        self.init(
            repository: repository,
            objects: ObjectWriter(store: repository.store, compressionLevel: repository.config.compression.level))
    }

    private init(repository: Repository, objects: ObjectWriter) {
        self.repository = repository
        self.objects = objects
        manifest = ManifestWriter(parameters: repository.config.chunker.tree, objects: objects)
    }

    /// A writer for a later part of the manifest, to be filled on another thread. It shares this
    /// writer's objects (a chunk stored by one is known to the other) and is committed with it.
    /// Its manifest lines are chunked on their own, so the manifest's chunk boundaries do not
    /// depend on which part finished first.
    public func makePart() -> SnapshotWriter {
        SnapshotWriter(repository: repository, objects: objects)
    }

    /// Reads a stream to its end and stores its chunks. When `read` throws, the bytes read so far
    /// are dropped and the error is rethrown; the writer stays usable.
    public func storeStream(_ kind: StreamKind, read: (UnsafeMutableRawBufferPointer) throws -> Int) throws
        -> StreamReference
    {
        let chunker =
            chunkers[kind]
            ?? StreamChunker(kind == .files ? repository.config.chunker.files : repository.config.chunker.database)
        chunkers[kind] = chunker
        let before = chunker.totalBytes
        var chunks: [ObjectID] = []
        do {
            try chunker.consume(
                read: read,
                onChunk: {
                    chunks.append(try objects.write($0))
                    bytesSeen += UInt64($0.count)
                    onChunk()
                })
        } catch {
            try? chunker.finish { _ in }
            throw error
        }
        return StreamReference(size: chunker.totalBytes - before, chunks: chunks)
    }

    /// Whether the repository (or this run) has the object: what a cached chunk list needs.
    func has(_ id: ObjectID) -> Bool { objects.contains(id) }

    /// Adds one manifest entry and counts it in the snapshot's totals.
    public func append(_ entry: ManifestEntry) throws {
        try manifest.append(entry)
        switch entry.kind {
        case .database: totals.databaseBytes += entry.size
        case .file:
            totals.files += 1
            totals.fileBytes += entry.size
        case .directory where entry.path != ".": totals.directories += 1
        case .symlink: totals.symlinks += 1
        case .directory: break
        }
    }

    /// Waits for every object to be durable, then writes the record: the commit point. `parts`
    /// (from `makePart()`, every one done) follow this writer's entries, in order.
    public func commit(
        time: Timestamp, host: String, tags: [String], program: String, sources: SnapshotRecord.Sources,
        errors: [String], parts: [SnapshotWriter] = []
    ) throws -> Snapshot {
        var manifestReference = try manifest.finish()
        for part in parts {
            precondition(part.objects === objects, "a part must come from this writer's makePart()")
            let reference = try part.manifest.finish()
            manifestReference = StreamReference(
                size: manifestReference.size + reference.size, chunks: manifestReference.chunks + reference.chunks)
            totals.databaseBytes += part.totals.databaseBytes
            totals.files += part.totals.files
            totals.fileBytes += part.totals.fileBytes
            totals.directories += part.totals.directories
            totals.symlinks += part.totals.symlinks
            filesUnchanged += part.filesUnchanged
        }
        let statistics = try objects.finish()
        totals.newObjects = statistics.newObjects
        totals.newBytes = statistics.newBytes
        totals.storedBytes = statistics.storedBytes
        if filesUnchanged > 0 { totals.filesUnchanged = filesUnchanged }
        let record = SnapshotRecord(
            time: time, host: host, tags: tags, program: program, sources: sources,
            manifest: manifestReference, totals: totals, errors: errors)
        return try repository.commit(record)
    }
}
