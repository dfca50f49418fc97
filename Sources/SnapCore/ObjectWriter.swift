import Foundation
import Synchronization

/// Stores the chunks of a snapshot: hashes each on the calling thread, skips the ones the
/// repository has, and hands new ones to worker threads in batches for compression and writing.
///
/// zstd is the slow stage, so it runs on every core; batching (one task per block of chunks)
/// keeps the hand-off cost negligible. Workers are plain threads, not Swift concurrency tasks,
/// because they block in `write` and `fsync`. The queue holds a few batches at most, so memory
/// stays bounded whatever the input size.
///
/// Several threads may write at once (the dump and the storage tree are read side by side): the
/// hashing runs unlocked on each caller's thread, the known set and the batch being filled sit
/// behind one lock.
public final class ObjectWriter: @unchecked Sendable {
    public struct Statistics: Sendable, Equatable {
        public var chunks = 0
        public var newObjects = 0
        public var newBytes: UInt64 = 0
        public var storedBytes: UInt64 = 0
    }

    private struct Batch {
        var bytes: [UInt8] = []
        var items: [(id: ObjectID, range: Range<Int>)] = []
    }

    /// What the writing threads share.
    private struct Filling {
        var known: Set<ObjectID>
        var current = Batch()
        var statistics = Statistics()
    }

    private let store: any ObjectStore
    private let filling: Mutex<Filling>
    private let queue: BlockingQueue<Batch>
    private let workers: [Thread]
    private let finished = DispatchGroup()
    private let shared = SharedState()
    private let batchBytes: Int

    public init(
        store: any ObjectStore, known: Set<ObjectID>, compressionLevel: Int,
        workerCount: Int = ProcessInfo.processInfo.activeProcessorCount, batchBytes: Int = 4 << 20
    ) {
        self.store = store
        self.filling = Mutex(Filling(known: known))
        self.batchBytes = batchBytes
        let count = max(1, workerCount)
        let queue = BlockingQueue<Batch>(capacity: count * 2)
        self.queue = queue
        var threads: [Thread] = []
        for index in 0..<count {
            finished.enter()
            let thread = Thread { [store, shared, finished] in
                let compressor = ZstdCompressor(level: compressionLevel)
                while let batch = queue.pop() {
                    if shared.state.withLock({ $0.failure != nil }) { continue }
                    do {
                        var written = 0
                        var stored: UInt64 = 0
                        try batch.bytes.withUnsafeBytes { raw in
                            for item in batch.items {
                                let frame = compressor.compress(UnsafeRawBufferPointer(rebasing: raw[item.range]))
                                if try store.put(item.id, encoded: frame) {
                                    written += 1
                                    stored += UInt64(frame.count)
                                }
                            }
                        }
                        shared.state.withLock {
                            $0.newObjects += written
                            $0.storedBytes += stored
                        }
                    } catch {
                        let failure = error as? SnapError ?? SnapError(.io, "cannot store an object", cause: error)
                        shared.state.withLock { if $0.failure == nil { $0.failure = failure } }
                    }
                }
                finished.leave()
            }
            thread.name = "snap-writer-\(index)"
            threads.append(thread)
        }
        workers = threads
        for thread in threads { thread.start() }
    }

    deinit {
        // Abandoned after an error: let the workers skip whatever is still queued, and wait for
        // the object each may be writing, so none is still writing while snap reports and exits.
        shared.state.withLock { if $0.failure == nil { $0.failure = SnapError(.io, "cancelled") } }
        queue.close()
        finished.wait()
    }

    /// Hashes `chunk`, queues it for storage if the repository lacks it, and returns its name.
    public func write(_ chunk: UnsafeRawBufferPointer) throws -> ObjectID {
        let id = ObjectID(hashing: chunk)
        let full: Batch? = filling.withLock { filling in
            filling.statistics.chunks += 1
            guard filling.known.insert(id).inserted else { return nil }
            let start = filling.current.bytes.count
            filling.current.bytes.append(contentsOf: chunk)
            filling.current.items.append((id, start..<filling.current.bytes.count))
            filling.statistics.newBytes += UInt64(chunk.count)
            return filling.current.bytes.count >= batchBytes ? takeBatch(&filling) : nil
        }
        if let full { try submit(full) }
        return id
    }

    /// Uncompressed bytes of the chunks found new so far.
    public var newBytes: UInt64 { filling.withLock { $0.statistics.newBytes } }

    /// Whether the repository (or this run) has the object already.
    public func contains(_ id: ObjectID) -> Bool { filling.withLock { $0.known.contains(id) } }

    /// Waits until every queued chunk is stored and durable; the record may be written after this.
    /// Call it once, after every writing thread is done.
    public func finish() throws -> Statistics {
        let (last, counted) = filling.withLock { ($0.current.items.isEmpty ? nil : takeBatch(&$0), $0.statistics) }
        if let last { try submit(last) }
        if let failure = shared.state.withLock({ $0.failure }) { throw failure }
        queue.close()
        finished.wait()
        let (failure, newObjects, storedBytes) = shared.state.withLock { ($0.failure, $0.newObjects, $0.storedBytes) }
        if let failure { throw failure }
        try store.flush()
        var statistics = counted
        statistics.newObjects = newObjects
        statistics.storedBytes = storedBytes
        return statistics
    }

    private func takeBatch(_ filling: inout Filling) -> Batch {
        let batch = filling.current
        filling.current = Batch()
        filling.current.bytes.reserveCapacity(batchBytes + (1 << 20))
        return batch
    }

    private func submit(_ batch: Batch) throws {
        if let failure = shared.state.withLock({ $0.failure }) { throw failure }
        queue.push(batch)
    }
}

/// What the worker threads report back, behind a lock.
private final class SharedState: Sendable {
    let state = Mutex<(failure: SnapError?, newObjects: Int, storedBytes: UInt64)>((nil, 0, 0))
}

/// A bounded FIFO whose `push` waits while full and `pop` waits while empty.
final class BlockingQueue<Element>: @unchecked Sendable {
    private let condition = NSCondition()
    /// Popped slots are set to nil at once, so a batch's memory goes back as soon as it is taken.
    private var items: [Element?] = []
    private var head = 0
    private var closed = false
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func push(_ element: Element) {
        condition.lock()
        defer { condition.unlock() }
        while items.count - head >= capacity && !closed { condition.wait() }
        guard !closed else { return }
        items.append(element)
        condition.broadcast()
    }

    /// The next element, or nil once the queue is closed and drained.
    func pop() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while items.count == head && !closed { condition.wait() }
        guard items.count > head else { return nil }
        let element = items[head]
        items[head] = nil
        head += 1
        if head > 64 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        condition.broadcast()
        return element
    }

    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}
