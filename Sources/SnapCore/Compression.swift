import CZstd

/// Compresses chunks into standard zstd frames; one instance per thread (it owns a `ZSTD_CCtx`).
public final class ZstdCompressor {
    private let context: OpaquePointer
    let level: Int32

    public init(level: Int) {
        guard let context = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        self.context = context
        self.level = Int32(level)
    }

    deinit { ZSTD_freeCCtx(context) }

    /// One complete frame holding `input`, with the content size in its header.
    public func compress(_ input: UnsafeRawBufferPointer) -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        return [UInt8](unsafeUninitializedCapacity: bound) { buffer, count in
            let written = ZSTD_compressCCtx(
                context, buffer.baseAddress, bound, input.baseAddress, input.count, level)
            precondition(
                ZSTD_isError(written) == 0, "zstd compression failed: \(String(cString: ZSTD_getErrorName(written)))")
            count = written
        }
    }
}

/// Decompresses single zstd frames; one instance per thread (it owns a `ZSTD_DCtx`).
public final class ZstdDecompressor {
    private let context: OpaquePointer

    public init() {
        guard let context = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        self.context = context
    }

    deinit { ZSTD_freeDCtx(context) }

    /// The content of `frame`, which must be exactly one zstd frame of at most `limit` bytes.
    public func decompress(_ frame: UnsafeRawBufferPointer, limit: Int) throws -> [UInt8] {
        guard let base = frame.baseAddress, frame.count > 0 else {
            throw SnapError(.corrupt, "empty object")
        }
        let frameSize = ZSTD_findFrameCompressedSize(base, frame.count)
        guard ZSTD_isError(frameSize) == 0, frameSize == frame.count else {
            throw SnapError(.corrupt, "not exactly one zstd frame")
        }
        let contentSize = ZSTD_getFrameContentSize(base, frame.count)
        guard contentSize != ZSTD_CONTENTSIZE_ERROR, contentSize != ZSTD_CONTENTSIZE_UNKNOWN,
            contentSize <= UInt64(limit)
        else {
            throw SnapError(.corrupt, "zstd frame without a valid content size")
        }
        let size = Int(contentSize)
        var failure: String?
        let result = [UInt8](unsafeUninitializedCapacity: max(size, 1)) { buffer, count in
            let written = ZSTD_decompressDCtx(context, buffer.baseAddress, size, base, frame.count)
            if ZSTD_isError(written) != 0 {
                failure = String(cString: ZSTD_getErrorName(written))
                count = 0
            } else {
                count = written
            }
        }
        if let failure { throw SnapError(.corrupt, "zstd: \(failure)") }
        guard result.count == size else { throw SnapError(.corrupt, "zstd frame shorter than its header says") }
        return result
    }
}
