/// Reads a stored stream (a file's or the database dump's chunks, in order) like a file, holding
/// one chunk in memory at a time.
public final class StreamReader {
    let repository: Repository
    let chunks: [ObjectID]
    let expectedSize: UInt64
    private let decompressor = ZstdDecompressor()
    private var nextChunk = 0
    private var current: [UInt8] = []
    private var offset = 0
    /// Bytes handed out so far.
    public private(set) var bytesRead: UInt64 = 0

    public init(repository: Repository, chunks: [ObjectID], size: UInt64) {
        self.repository = repository
        self.chunks = chunks
        self.expectedSize = size
    }

    /// Up to `buffer.count` bytes; 0 at the end. Verifies every chunk and the total length.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while offset == current.count {
            guard nextChunk < chunks.count else {
                guard bytesRead == expectedSize else {
                    throw SnapError(
                        .corrupt, "a stored stream holds \(bytesRead) bytes, its manifest says \(expectedSize)")
                }
                return 0
            }
            current = try repository.loadObject(chunks[nextChunk], decompressor: decompressor)
            nextChunk += 1
            offset = 0
        }
        let count = min(buffer.count, current.count - offset)
        current.withUnsafeBytes { source in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<offset + count]))
        }
        offset += count
        bytesRead += UInt64(count)
        return count
    }
}

extension ManifestReader {
    /// The database dump entry of a snapshot, if it has one. It is the manifest's first entry, so
    /// this reads only the first chunk or so.
    public func databaseEntry(_ manifest: StreamReference) throws -> ManifestEntry? {
        struct Found: Error { var entry: ManifestEntry? }
        do {
            try forEachEntry(manifest) { throw Found(entry: $0.kind == .database ? $0 : nil) }
        } catch let found as Found {
            return found.entry
        }
        return nil
    }
}
