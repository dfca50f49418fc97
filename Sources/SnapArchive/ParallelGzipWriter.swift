import CZlib
import Foundation
import SnapCore

/// Compresses a byte stream into one gzip member on several threads, like `pigz`.
///
/// The input is cut into blocks. Worker threads deflate each block on its own as raw deflate,
/// primed with the previous block's last 32 KiB so the ratio stays close to plain `gzip`, and end
/// it with a sync flush so the blocks concatenate into one valid deflate stream; the last block is
/// finished normally. The calling thread writes the blocks to the sink in order, between a gzip
/// header and a trailer whose CRC-32 combines the per-block CRCs. At most `2 * workers + 1` blocks
/// exist at once (about 1.1 MiB each at the default block size), so memory stays bounded
/// whatever the input size.
///
/// Blocks whose bytes look random (order-0 entropy above ~7.97 bits per byte: compressed dumps,
/// images, archives) are stored rather than deflated when `storeIncompressible` is on: deflate
/// cannot shrink them meaningfully, and storing is ~100 times faster. The output stays the same
/// size as `gzip`'s within a fraction of a percent on such data.
///
/// `write` and `finish` must be called from one thread; the sink is called on that thread.
public final class ParallelGzipWriter {
    /// 512 KiB. Measured on 300 MB of mixed text and random data (2 cores, level 6): 64 KiB
    /// costs ~6% more CPU than 512 KiB (priming each block with a 32 KiB dictionary is not free),
    /// 1 MiB gains nothing more; every size stays within 0.06% of `gzip -6`'s output size.
    public static let defaultBlockSize = 512 << 10

    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private let level: Int32
    private let blockSize: Int
    private let maxBlocks: Int
    private let shared: Shared
    private var threads: [Thread] = []

    private var current: Block?
    private var free: [Block] = []
    private var allocated = 0
    /// Submitted blocks in input order, oldest first.
    private var inFlight: [Block] = []
    /// The last 32 KiB of the input so far, the dictionary of the next block.
    private let tail: UnsafeMutableRawPointer
    private var tailCount = 0

    private var headerWritten = false
    private var crc: UInt = 0
    private var finished = false
    private var failure: SnapError?

    /// Uncompressed bytes accepted so far.
    public private(set) var bytesIn: UInt64 = 0
    /// Compressed bytes handed to the sink so far.
    public private(set) var bytesOut: UInt64 = 0

    /// - Parameters:
    ///   - level: zlib level 1...9 (6 is gzip's default); 0 stores.
    ///   - workers: compression threads, one per core by default.
    ///   - blockSize: uncompressed bytes per block (at least 32 KiB).
    ///   - storeIncompressible: store blocks that look random instead of deflating them.
    ///   - sink: receives the gzip bytes in order, on the calling thread.
    public init(
        level: Int = 6, workers: Int = ProcessInfo.processInfo.activeProcessorCount,
        blockSize: Int = ParallelGzipWriter.defaultBlockSize, storeIncompressible: Bool = true,
        sink: @escaping (UnsafeRawBufferPointer) throws -> Void
    ) {
        self.sink = sink
        self.level = Int32(min(9, max(0, level)))
        self.blockSize = max(Block.dictionarySize, blockSize)
        let count = max(1, workers)
        self.maxBlocks = 2 * count + 1
        self.tail = .allocate(byteCount: Block.dictionarySize, alignment: 16)
        let shared = Shared()
        self.shared = shared
        let level = self.level
        for index in 0..<count {
            let thread = Thread {
                let compressor = BlockCompressor(level: level, storeIncompressible: storeIncompressible)
                while let block = shared.nextJob() {
                    compressor.compress(block)
                    shared.markDone(block)
                }
            }
            thread.name = "snap-gzip-\(index)"
            thread.stackSize = 1 << 20
            threads.append(thread)
        }
        for thread in threads { thread.start() }
    }

    deinit {
        shared.close()
        tail.deallocate()
    }

    /// Queues `bytes` for compression; blocks while all in-flight blocks are busy.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try checkUsable()
        var offset = 0
        while offset < bytes.count {
            let block = try current ?? takeBlock()
            current = block
            let n = min(blockSize - block.count, bytes.count - offset)
            block.data.advanced(by: block.count).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
            block.count += n
            offset += n
            if block.count == blockSize { try submit(block, last: false) }
        }
        bytesIn += UInt64(bytes.count)
    }

    /// Compresses what is left, writes everything and the gzip trailer, and stops the workers.
    public func finish() throws {
        try checkUsable()
        let block = try current ?? takeBlock()
        try submit(block, last: true)
        do {
            while !inFlight.isEmpty { try emitOldest(wait: true) }
            var trailer = [UInt8](repeating: 0, count: 8)
            for index in 0..<4 {
                trailer[index] = UInt8(truncatingIfNeeded: UInt32(truncatingIfNeeded: crc) >> (8 * index))
                trailer[4 + index] = UInt8(truncatingIfNeeded: UInt32(truncatingIfNeeded: bytesIn) >> (8 * index))
            }
            try trailer.withUnsafeBytes { try output($0) }
        } catch {
            fail(error)
            throw failure!
        }
        finished = true
        shared.close()
    }

    // MARK: - Blocks

    private func checkUsable() throws {
        if let failure { throw failure }
        if finished { throw SnapError(.invalidInput, "gzip: write after finish") }
    }

    private func fail(_ error: any Error) {
        if failure == nil {
            failure = error as? SnapError ?? SnapError(.io, "cannot write the gzip stream", cause: error)
        }
        shared.close()
    }

    /// A free block primed with the dictionary, waiting for (and writing) the oldest one if needed.
    private func takeBlock() throws -> Block {
        while free.isEmpty && allocated >= maxBlocks {
            do { try emitOldest(wait: true) } catch {
                fail(error)
                throw failure!
            }
        }
        let block: Block
        if let reused = free.popLast() {
            block = reused
        } else {
            block = Block(capacity: blockSize)
            allocated += 1
        }
        block.reset()
        block.dictionaryCount = tailCount
        block.dictionary.copyMemory(from: tail, byteCount: tailCount)
        return block
    }

    private func submit(_ block: Block, last: Bool) throws {
        current = nil
        block.isLast = last
        if !last {
            // blockSize >= 32 KiB, so the block's own tail is the whole next dictionary.
            tailCount = min(Block.dictionarySize, block.count)
            tail.copyMemory(from: block.data + (block.count - tailCount), byteCount: tailCount)
        }
        inFlight.append(block)
        shared.submit(block)
        // Write whatever is already done, without waiting, to keep memory and latency low.
        do {
            while let oldest = inFlight.first, shared.isDone(oldest) { try emitOldest(wait: false) }
        } catch {
            fail(error)
            throw failure!
        }
    }

    private func emitOldest(wait: Bool) throws {
        let block = inFlight.removeFirst()
        if wait { shared.waitUntilDone(block) }
        if let problem = block.failure { throw SnapError(.io, "gzip compression failed: \(problem)") }
        if !headerWritten {
            // Magic, deflate, no flags, no mtime, extra flags (2: best, 4: fastest), OS 3 (Unix).
            let extra: UInt8 = level >= 9 ? 2 : (level == 1 ? 4 : 0)
            let header: [UInt8] = [0x1F, 0x8B, 8, 0, 0, 0, 0, 0, extra, 3]
            try header.withUnsafeBytes { try output($0) }
            headerWritten = true
        }
        try output(UnsafeRawBufferPointer(start: block.output, count: block.outputCount))
        crc = crc32_combine(crc, block.crc, off_t(block.count))
        free.append(block)
    }

    private func output(_ bytes: UnsafeRawBufferPointer) throws {
        try sink(bytes)
        bytesOut += UInt64(bytes.count)
    }
}

/// One block of input and its compressed form. Owned by the writer thread except between
/// `submit` and `markDone`, when a single worker owns it.
private final class Block: @unchecked Sendable {
    static let dictionarySize = 32 << 10

    let capacity: Int
    /// `dictionarySize` bytes of dictionary, then `capacity` bytes of data.
    private let storage: UnsafeMutableRawPointer
    var dictionary: UnsafeMutableRawPointer { storage }
    var data: UnsafeMutableRawPointer { storage + Self.dictionarySize }
    var dictionaryCount = 0
    var count = 0
    var isLast = false

    var output: UnsafeMutableRawPointer
    var outputCapacity: Int
    var outputCount = 0
    var crc: UInt = 0
    var failure: String?
    /// Guarded by `Shared.condition`.
    var done = false

    init(capacity: Int) {
        self.capacity = capacity
        storage = .allocate(byteCount: Self.dictionarySize + capacity, alignment: 16)
        // Room for a stored copy of the whole block plus block and flush markers; grown if needed.
        outputCapacity = capacity + capacity / 16 + 1024
        output = .allocate(byteCount: outputCapacity, alignment: 16)
    }

    deinit {
        storage.deallocate()
        output.deallocate()
    }

    func reset() {
        dictionaryCount = 0
        count = 0
        isLast = false
        outputCount = 0
        crc = 0
        failure = nil
        done = false
    }

    func growOutput() {
        let bigger = UnsafeMutableRawPointer.allocate(byteCount: outputCapacity * 2, alignment: 16)
        bigger.copyMemory(from: output, byteCount: outputCount)
        output.deallocate()
        output = bigger
        outputCapacity *= 2
    }
}

/// The job queue and completion flags shared by the writer and its workers.
private final class Shared: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [Block] = []
    private var closed = false

    func submit(_ block: Block) {
        condition.lock()
        jobs.append(block)
        condition.broadcast()
        condition.unlock()
    }

    /// The next block to compress, or nil once closed.
    func nextJob() -> Block? {
        condition.lock()
        defer { condition.unlock() }
        while jobs.isEmpty && !closed { condition.wait() }
        if closed { return nil }
        return jobs.removeFirst()
    }

    func markDone(_ block: Block) {
        condition.lock()
        block.done = true
        condition.broadcast()
        condition.unlock()
    }

    func isDone(_ block: Block) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return block.done
    }

    func waitUntilDone(_ block: Block) {
        condition.lock()
        defer { condition.unlock() }
        while !block.done { condition.wait() }
    }

    /// Stops the workers; blocks still queued are dropped.
    func close() {
        condition.lock()
        closed = true
        jobs.removeAll()
        condition.broadcast()
        condition.unlock()
    }
}

/// A worker's deflate state: one raw-deflate stream at the chosen level and one that stores.
private final class BlockCompressor {
    private let stream: UnsafeMutablePointer<z_stream>
    private let storeStream: UnsafeMutablePointer<z_stream>?
    private var histogram = [Int](repeating: 0, count: 256)

    init(level: Int32, storeIncompressible: Bool) {
        stream = Self.makeStream(level: level)
        storeStream = storeIncompressible && level > 0 ? Self.makeStream(level: 0) : nil
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
        if let storeStream {
            deflateEnd(storeStream)
            storeStream.deallocate()
        }
    }

    private static func makeStream(level: Int32) -> UnsafeMutablePointer<z_stream> {
        // z_stream must not move once initialized: zlib keeps a pointer back to it.
        let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let status = deflateInit2_(
            stream, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        precondition(status == Z_OK, "deflateInit2 failed (\(status)): out of memory")
        return stream
    }

    func compress(_ block: Block) {
        block.crc = crc32(0, block.data.assumingMemoryBound(to: Bytef.self), uInt(block.count))
        let stream = storeStream.flatMap { looksRandom(block) ? $0 : nil } ?? self.stream
        deflateReset(stream)
        if block.dictionaryCount > 0 {
            deflateSetDictionary(
                stream, block.dictionary.assumingMemoryBound(to: Bytef.self), uInt(block.dictionaryCount))
        }
        stream.pointee.next_in = block.data.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_in = uInt(block.count)
        let flush = block.isLast ? Z_FINISH : Z_SYNC_FLUSH
        while true {
            if block.outputCount == block.outputCapacity { block.growOutput() }
            stream.pointee.next_out = (block.output + block.outputCount).assumingMemoryBound(to: Bytef.self)
            let room = block.outputCapacity - block.outputCount
            stream.pointee.avail_out = uInt(room)
            let status = deflate(stream, flush)
            block.outputCount += room - Int(stream.pointee.avail_out)
            if status == Z_STREAM_ERROR {
                block.failure = "deflate returned \(status)"
                return
            }
            if block.isLast {
                if status == Z_STREAM_END { return }
            } else if stream.pointee.avail_in == 0 && stream.pointee.avail_out > 0 {
                return  // the sync flush completed
            }
        }
    }

    /// Whether the block's byte histogram is so flat that deflate cannot gain anything worth
    /// its time: order-0 entropy above 7.97 bits per byte. Real random data of 128 KiB scores
    /// ~7.9986; compressible data far less. Small blocks are always deflated.
    private func looksRandom(_ block: Block) -> Bool {
        let count = block.count
        guard count >= 16 << 10 else { return false }
        histogram.withUnsafeMutableBufferPointer { counts in
            for index in 0..<256 { counts[index] = 0 }
            let bytes = UnsafeRawBufferPointer(start: block.data, count: count)
            for byte in bytes { counts[Int(byte)] += 1 }
        }
        var sum = 0.0
        for c in histogram where c > 0 {
            let value = Double(c)
            sum += value * log2(value)
        }
        let total = Double(count)
        let entropy = log2(total) - sum / total
        return entropy > 7.97
    }
}
