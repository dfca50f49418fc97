/// Writes one snapshot: stores streams as chunks, collects the manifest, and commits the record.
///
/// Both ways of making a snapshot use it: reading a database dump and a storage folder
/// (`SnapshotBuilder`), and importing a classic tar.gz. Entries must be appended in manifest order
/// (the database first, then the storage tree depth-first with names sorted by their bytes).
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

    /// Loads the names of the objects the repository has, so that known chunks cost nothing.
    public init(repository: Repository) throws {
        self.repository = repository
        objects = ObjectWriter(
            store: repository.store, known: try repository.objectNames(),
            compressionLevel: repository.config.compression.level)
        manifest = ManifestWriter(parameters: repository.config.chunker.tree, objects: objects)
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

    /// Waits for every object to be durable, then writes the record: the commit point.
    public func commit(
        time: Timestamp, host: String, tags: [String], program: String, sources: SnapshotRecord.Sources,
        errors: [String]
    ) throws -> Snapshot {
        let manifestReference = try manifest.finish()
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
