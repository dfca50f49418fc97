/// Minimum, average and maximum chunk sizes for one kind of stream.
///
/// Recorded in the repository's `config`: changing them changes every cut point, so a repository
/// keeps the values it was created with.
public struct ChunkerParameters: Codable, Sendable, Equatable {
    public var minSize: Int
    public var averageSize: Int
    public var maxSize: Int

    public init(minSize: Int, averageSize: Int, maxSize: Int) {
        self.minSize = minSize
        self.averageSize = averageSize
        self.maxSize = maxSize
    }

    enum CodingKeys: String, CodingKey {
        case minSize = "min"
        case averageSize = "avg"
        case maxSize = "max"
    }

    /// Storage files: larger chunks keep the object count low for big uploads.
    public static let files = ChunkerParameters(minSize: 256 << 10, averageSize: 1 << 20, maxSize: 4 << 20)
    /// Database dumps: updated rows move within a dump, so changes scatter; small chunks dedup better.
    public static let database = ChunkerParameters(minSize: 16 << 10, averageSize: 64 << 10, maxSize: 256 << 10)
    /// Manifests: a changed file rewrites one line, so small chunks keep a new snapshot cheap.
    public static let tree = ChunkerParameters(minSize: 16 << 10, averageSize: 64 << 10, maxSize: 256 << 10)

    /// Checks the invariants FastCDC needs; the message names the offending value.
    public func validate() throws {
        let isPowerOfTwo = averageSize > 0 && averageSize & (averageSize - 1) == 0
        guard minSize >= 64, isPowerOfTwo, averageSize >= 256, minSize < averageSize,
            averageSize < maxSize, maxSize <= 64 << 20
        else {
            throw SnapError(
                .invalidInput,
                "invalid chunker sizes min=\(minSize) avg=\(averageSize) max=\(maxSize): need 64 <= min < avg < max <= 64 MiB, avg a power of two"
            )
        }
    }
}

/// FastCDC content-defined chunking with a gear hash and normalized chunking (level 2).
///
/// The cut point of a chunk depends only on its own bytes, so inserting data early in a stream
/// moves only the chunks around the insertion. `docs/FORMAT.md` specifies the algorithm and table.
public struct FastCDC: Sendable {
    public let parameters: ChunkerParameters
    /// Harder mask (log2(avg) + 2 bits) before the average size, easier (log2(avg) - 2) after it.
    let maskSmall: UInt64
    let maskLarge: UInt64

    public init(_ parameters: ChunkerParameters) {
        self.parameters = parameters
        let bits = UInt64(parameters.averageSize.trailingZeroBitCount)
        // The gear hash shifts left, so its high bits depend on the most bytes: mask from the top.
        maskSmall = ~UInt64(0) << (64 - (bits + 2))
        maskLarge = ~UInt64(0) << (64 - (bits - 2))
    }

    /// The length of the first chunk of `bytes`, which must be either at least `maxSize` long or
    /// the end of the stream.
    @inline(__always)
    public func cut(_ bytes: UnsafeRawBufferPointer) -> Int {
        let count = bytes.count
        if count <= parameters.minSize { return count }
        let end = Swift.min(count, parameters.maxSize)
        let normal = Swift.min(parameters.averageSize, end)
        let data = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let gear = GearTable.values
        var hash: UInt64 = 0
        var index = parameters.minSize
        while index < normal {
            hash = (hash << 1) &+ gear[Int(data[index])]
            if hash & maskSmall == 0 { return index + 1 }
            index += 1
        }
        while index < end {
            hash = (hash << 1) &+ gear[Int(data[index])]
            if hash & maskLarge == 0 { return index + 1 }
            index += 1
        }
        return end
    }
}

/// The 256 gear values: successive outputs of SplitMix64 seeded with 0x736E6170 ("snap").
/// Fixed forever: the same bytes give the same cut points on every machine.
enum GearTable {
    static let seed: UInt64 = 0x736E_6170

    nonisolated(unsafe) static let values: UnsafePointer<UInt64> = {
        let table = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
        var state = seed
        for index in 0..<256 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            table[index] = z ^ (z >> 31)
        }
        return UnsafePointer(table)
    }()
}

/// Cuts a stream into chunks with a buffer of bounded size (twice the maximum chunk).
///
/// Bytes arrive either pulled from a reader (`consume`) or pushed (`append` then `finish`). Each
/// chunk is handed to the caller as a buffer that is valid only during the call.
public final class StreamChunker {
    public let cdc: FastCDC
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    /// Bytes seen so far.
    public private(set) var totalBytes: UInt64 = 0

    public init(_ parameters: ChunkerParameters) {
        cdc = FastCDC(parameters)
        let capacity = Swift.max(2 * parameters.maxSize, 1 << 20)
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// Reads with `read` until it returns 0, emitting every chunk including the last.
    public func consume(
        read: (UnsafeMutableRawBufferPointer) throws -> Int,
        onChunk: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var atEnd = false
        while !atEnd {
            compact()
            while end < buffer.count {
                let n = try read(UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
                if n == 0 {
                    atEnd = true
                    break
                }
                end += n
                totalBytes += UInt64(n)
            }
            try emit(final: atEnd, onChunk)
        }
    }

    /// Adds bytes; emits the chunks that can no longer change.
    public func append(_ bytes: UnsafeRawBufferPointer, onChunk: (UnsafeRawBufferPointer) throws -> Void) throws {
        var offset = 0
        while offset < bytes.count {
            if end == buffer.count {
                try emit(final: false, onChunk)
                compact()
            }
            let n = Swift.min(bytes.count - offset, buffer.count - end)
            UnsafeMutableRawBufferPointer(rebasing: buffer[end..<end + n])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]))
            end += n
            offset += n
            totalBytes += UInt64(n)
        }
    }

    /// Emits whatever is left as the final chunks of the stream.
    public func finish(onChunk: (UnsafeRawBufferPointer) throws -> Void) throws {
        try emit(final: true, onChunk)
        start = 0
        end = 0
    }

    private func emit(final: Bool, _ onChunk: (UnsafeRawBufferPointer) throws -> Void) throws {
        let needed = final ? 1 : cdc.parameters.maxSize
        while end - start >= needed {
            let available = UnsafeRawBufferPointer(rebasing: buffer[start..<end])
            let length = cdc.cut(available)
            try onChunk(UnsafeRawBufferPointer(rebasing: available[0..<length]))
            start += length
        }
    }

    private func compact() {
        guard start > 0 else { return }
        let remaining = end - start
        if remaining > 0 {
            buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: remaining)
        }
        start = 0
        end = remaining
    }
}
