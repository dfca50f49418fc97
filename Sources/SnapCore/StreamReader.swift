import Foundation

/// Reads a stored stream (a file's or the database dump's chunks, in order) like a file, holding
/// one chunk in memory at a time, or a few when reading ahead.
public final class StreamReader {
    let repository: Repository
    let chunks: [ObjectID]
    let expectedSize: UInt64
    private let decompressor = ZstdDecompressor()
    private let prefetcher: ChunkPrefetcher?
    private var failure: (any Error)?
    private var nextChunk = 0
    private var current: [UInt8] = []
    private var offset = 0
    /// Bytes handed out so far.
    public private(set) var bytesRead: UInt64 = 0

    /// `readAhead` threads (0: none) load, decompress and verify the next chunks while the
    /// caller uses this one: what a restore does with the dump (pg_restore, or the temporary file
    /// of a parallel restore) runs meanwhile. At most 4 chunks per thread are held ahead.
    public init(repository: Repository, chunks: [ObjectID], size: UInt64, readAhead: Int = 0) {
        self.repository = repository
        self.chunks = chunks
        self.expectedSize = size
        prefetcher =
            readAhead > 0 && chunks.count > 1
            ? ChunkPrefetcher(repository: repository, chunks: chunks, workers: readAhead, window: 4 * readAhead) : nil
    }

    deinit { prefetcher?.stop() }

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
            if let failure { throw failure }
            if let prefetcher {
                do {
                    current = try prefetcher.next()
                } catch {
                    // The chunk is lost to the reader: every later read fails the same way.
                    failure = error
                    throw error
                }
            } else {
                current = try repository.loadObject(chunks[nextChunk], decompressor: decompressor)
            }
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

/// Loads a stream's chunks on worker threads ahead of its reader and hands them out in order,
/// with at most `window` chunks loaded or being loaded beyond the one handed out last.
private final class ChunkPrefetcher: @unchecked Sendable {
    private let condition = NSCondition()
    private let chunks: [ObjectID]
    private let window: Int
    private var loaded: [Int: Result<[UInt8], any Error>] = [:]
    private var nextToLoad = 0
    private var nextToHand = 0
    private var stopped = false
    private let running = DispatchGroup()

    init(repository: Repository, chunks: [ObjectID], workers: Int, window: Int) {
        self.chunks = chunks
        self.window = max(window, workers)
        for index in 0..<workers {
            running.enter()
            let thread = Thread { [self] in
                work(repository)
                running.leave()
            }
            thread.name = "snap-read-ahead-\(index)"
            thread.start()
        }
    }

    private func work(_ repository: Repository) {
        let decompressor = ZstdDecompressor()
        while true {
            condition.lock()
            while !stopped && nextToLoad < chunks.count && nextToLoad >= nextToHand + window { condition.wait() }
            guard !stopped, nextToLoad < chunks.count else {
                condition.unlock()
                return
            }
            let index = nextToLoad
            nextToLoad += 1
            condition.unlock()
            let result = Result { try repository.loadObject(chunks[index], decompressor: decompressor) }
            condition.lock()
            loaded[index] = result
            condition.broadcast()
            condition.unlock()
        }
    }

    /// The next chunk's content, waiting for it if need be; a chunk that could not be loaded
    /// throws here, in its turn.
    func next() throws -> [UInt8] {
        condition.lock()
        defer { condition.unlock() }
        precondition(nextToHand < chunks.count, "read past the last chunk")
        while loaded[nextToHand] == nil { condition.wait() }
        let result = loaded.removeValue(forKey: nextToHand)!
        nextToHand += 1
        condition.broadcast()
        return try result.get()
    }

    /// Lets the workers end without loading the rest, and waits until they have (each finishes
    /// the chunk it is loading): nothing of a stopped reader runs on while its caller goes on to
    /// report a failure and exit.
    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
        running.wait()
    }
}
