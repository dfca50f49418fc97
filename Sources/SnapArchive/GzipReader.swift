import CZlib
import SnapCore

/// Decompresses a gzip stream read through a closure, a buffer at a time.
///
/// Handles several concatenated gzip members as one stream (as `gzip -d` does) and ignores zero
/// bytes after the last member (tape padding). zlib checks each member's CRC-32 and length; a
/// mismatch, a truncated stream or other trailing data is an error with code `.corrupt`.
///
/// Not thread-safe: call it from one thread.
public final class GzipReader {
    private let source: (UnsafeMutableRawBufferPointer) throws -> Int
    private let stream: UnsafeMutablePointer<z_stream>
    private let input: UnsafeMutableRawBufferPointer
    private var sourceEnded = false
    private var finished = false
    /// True between members: the next bytes must start a new member (or be zero padding).
    private var atMemberBoundary = true
    private var members = 0

    /// Compressed bytes read from the source so far.
    public private(set) var bytesIn: UInt64 = 0
    /// Decompressed bytes returned so far.
    public private(set) var bytesOut: UInt64 = 0

    /// `source` fills the buffer it gets and returns the byte count, 0 at the end of the input.
    public init(bufferSize: Int = 128 << 10, source: @escaping (UnsafeMutableRawBufferPointer) throws -> Int) {
        self.source = source
        input = .allocate(byteCount: max(1024, bufferSize), alignment: 16)
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // 15 + 32: a 32 KiB window, with the gzip (or zlib) header detected automatically.
        let status = inflateInit2_(stream, 15 + 32, zlibVersion(), Int32(MemoryLayout<z_stream>.size))
        precondition(status == Z_OK, "inflateInit2 failed (\(status)): out of memory")
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
        input.deallocate()
    }

    /// Fills `buffer` with decompressed bytes; returns how many, 0 only at the end of the stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard !finished, buffer.count > 0 else { return 0 }
        while true {
            if stream.pointee.avail_in == 0 && !sourceEnded { try refill() }
            if atMemberBoundary {
                guard try startMember() else {
                    finished = true
                    return 0
                }
            }
            stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = uInt(min(buffer.count, Int(UInt32.max)))
            let before = stream.pointee.avail_out
            let status = inflate(stream, Z_NO_FLUSH)
            let produced = Int(before - stream.pointee.avail_out)
            bytesOut += UInt64(produced)
            switch status {
            case Z_OK:
                break
            case Z_STREAM_END:
                atMemberBoundary = true
            case Z_BUF_ERROR:
                // No progress: out of input. Output room was there, so the input must be exhausted.
                if sourceEnded && stream.pointee.avail_in == 0 {
                    throw SnapError(
                        .corrupt, "the gzip data is truncated: it ends in the middle of member \(members)")
                }
            case Z_NEED_DICT, Z_DATA_ERROR:
                throw SnapError(.corrupt, "the gzip data is corrupt (\(zlibMessage(or: "invalid data")))")
            case Z_MEM_ERROR:
                throw SnapError(.io, "gunzip: out of memory")
            default:
                throw SnapError(.corrupt, "gunzip failed: \(zlibMessage(or: "zlib error \(status)"))")
            }
            if produced > 0 { return produced }
            if status == Z_OK && sourceEnded && stream.pointee.avail_in == 0 {
                throw SnapError(.corrupt, "the gzip data is truncated: it ends in the middle of member \(members)")
            }
        }
    }

    /// At a member boundary: false at a clean end (input over, or only zero bytes left); true
    /// when another member starts; throws on anything else.
    private func startMember() throws -> Bool {
        while stream.pointee.avail_in == 0 {
            if sourceEnded {
                if members == 0 { throw SnapError(.corrupt, "the input is empty, not gzip data") }
                return false
            }
            try refill()
        }
        let first = stream.pointee.next_in[0]
        if first == 0 && members > 0 {
            // Padding after the last member: allowed if nothing but zeros follows.
            while true {
                let available = UnsafeBufferPointer(start: stream.pointee.next_in, count: Int(stream.pointee.avail_in))
                guard available.allSatisfy({ $0 == 0 }) else {
                    throw SnapError(.corrupt, "unexpected data after the end of the gzip stream")
                }
                stream.pointee.avail_in = 0
                if sourceEnded { return false }
                try refill()
            }
        }
        if first != 0x1F {
            throw SnapError(
                .corrupt,
                members == 0
                    ? "the input is not gzip data (wrong magic number)"
                    : "unexpected data after the end of the gzip stream")
        }
        if members > 0 { inflateReset(stream) }
        members += 1
        atMemberBoundary = false
        return true
    }

    private func refill() throws {
        let n = try source(input)
        precondition(n >= 0 && n <= input.count, "GzipReader source returned \(n) for a \(input.count)-byte buffer")
        if n == 0 {
            sourceEnded = true
        } else {
            bytesIn += UInt64(n)
        }
        stream.pointee.next_in = input.baseAddress!.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_in = uInt(n)
    }

    private func zlibMessage(or fallback: String) -> String {
        guard let message = stream.pointee.msg else { return fallback }
        return String(cString: message)
    }
}
