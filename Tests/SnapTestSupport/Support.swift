// Test helpers shared by the test targets.

/// A source closure over an in-memory byte array, handing out at most `chunk` bytes per call.
public func memorySource(_ bytes: [UInt8], chunk: Int = .max) -> (UnsafeMutableRawBufferPointer) throws -> Int {
    var offset = 0
    return { buffer in
        let n = min(buffer.count, bytes.count - offset, chunk)
        if n > 0 {
            bytes.withUnsafeBytes {
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)]))
            }
        }
        offset += n
        return n
    }
}
