import Foundation

/// Reads a stream on its own thread, a few blocks ahead of the consumer.
///
/// For a pipe from pg_dump: while the caller chunks and hashes one block, the next ones are being
/// read, so pg_dump never waits for snap's CPU work and the two overlap on two cores. Memory is
/// bounded by `depth` blocks.
final class ReadAhead: @unchecked Sendable {
    private let condition = NSCondition()
    private var ready: [[UInt8]] = []
    private var spare: [[UInt8]] = []
    private var finished = false
    private var failure: (any Error)?
    private var cancelled = false
    private var current: [UInt8] = []
    private var offset = 0
    private var thread: Thread!

    /// `read` is called only on the read-ahead thread until it returns 0 or throws. Call
    /// `cancel` when done, or the thread waits for the consumer forever.
    init(
        blockSize: Int = 1 << 20, depth: Int = 4,
        read: @escaping @Sendable (UnsafeMutableRawBufferPointer) throws -> Int
    ) {
        spare = (0..<depth).map { _ in [UInt8](repeating: 0, count: blockSize) }
        let box = Box()
        thread = Thread {
            box.reader?.fill(blockSize: blockSize, read: read)
            box.reader = nil
        }
        box.reader = self
        thread.name = "snap-read-ahead"
        thread.start()
    }

    /// Hands the reader to its thread, which keeps it until `fill` returns.
    private final class Box: @unchecked Sendable { var reader: ReadAhead? }

    /// Stops the thread once its current read returns; the consumer must not read afterwards.
    func cancel() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        condition.unlock()
    }

    private func fill(blockSize: Int, read: (UnsafeMutableRawBufferPointer) throws -> Int) {
        while true {
            condition.lock()
            while spare.isEmpty && !cancelled { condition.wait() }
            if cancelled {
                condition.unlock()
                return
            }
            var block = spare.removeLast()
            condition.unlock()

            var filled = 0
            var atEnd = false
            do {
                if block.count < blockSize {
                    block.append(contentsOf: repeatElement(0, count: blockSize - block.count))
                }
                // Fill the block unless the stream ends: fewer hand-offs for the consumer.
                while filled < blockSize {
                    let count = try block.withUnsafeMutableBytes {
                        try read(UnsafeMutableRawBufferPointer(rebasing: $0[filled...]))
                    }
                    if count == 0 {
                        atEnd = true
                        break
                    }
                    filled += count
                }
            } catch {
                condition.lock()
                failure = error
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            block.removeLast(blockSize - filled)
            condition.lock()
            if filled > 0 { ready.append(block) }
            if atEnd { finished = true }
            condition.broadcast()
            condition.unlock()
            if atEnd { return }
        }
    }

    /// Up to `buffer.count` bytes; 0 at the end; rethrows the reader's error.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if offset == current.count {
            condition.lock()
            if !current.isEmpty {
                current.removeAll(keepingCapacity: true)
                spare.append(current)
                current = []
                condition.broadcast()
            }
            while ready.isEmpty && !finished { condition.wait() }
            if ready.isEmpty {
                let failure = self.failure
                condition.unlock()
                if let failure { throw failure }
                return 0
            }
            current = ready.removeFirst()
            offset = 0
            condition.unlock()
        }
        let count = min(buffer.count, current.count - offset)
        current.withUnsafeBytes {
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + count]))
        }
        offset += count
        return count
    }
}
