import SnapTestSupport
import Testing

@testable import SnapCore

/// Chunks `data` by pushing it in pieces of `pieceSize`.
func chunkLengths(_ data: [UInt8], _ parameters: ChunkerParameters, pieceSize: Int = 1 << 20) throws -> [Int] {
    let chunker = StreamChunker(parameters)
    var lengths: [Int] = []
    try data.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let end = min(raw.count, offset + pieceSize)
            try chunker.append(UnsafeRawBufferPointer(rebasing: raw[offset..<end])) { lengths.append($0.count) }
            offset = end
        }
        try chunker.finish { lengths.append($0.count) }
    }
    return lengths
}

@Suite struct ChunkerTests {
    let small = ChunkerParameters(minSize: 2048, averageSize: 8192, maxSize: 32768)

    @Test func sameBytesGiveSameCutPoints() throws {
        let data = pseudoRandomBytes(4 << 20, seed: 1)
        let first = try chunkLengths(data, small)
        let second = try chunkLengths(data, small, pieceSize: 777)
        #expect(first == second)
        #expect(first.reduce(0, +) == data.count)
        #expect(first.count > 100)
    }

    /// Pins the algorithm and gear table: if this changes, every existing repository stops
    /// deduplicating against new snapshots.
    @Test func cutPointsArePinned() throws {
        let data = pseudoRandomBytes(1 << 20, seed: 42)
        let lengths = try chunkLengths(data, small)
        let digest = ObjectID(hashing: lengths.map(String.init).joined(separator: ",").utf8.map { $0 })
        #expect(Array(lengths.prefix(8)) == [12072, 2755, 9626, 8304, 8533, 4400, 10057, 8864])
        #expect(lengths.count == 114)
        #expect(digest.hex == "f6b3a6c49b4b63ee81315626733fd1062ab26503fd94aa88e673715e9ced92db")
        #expect(GearTable.values[0] == 0x5F57_4997_4103_3812)
        #expect(GearTable.values[255] == 0x9AD4_1462_1F0E_5529)
    }

    @Test(arguments: [ChunkerParameters.files, .database, .tree])
    func minimumAndMaximumAreRespected(_ parameters: ChunkerParameters) throws {
        let data = pseudoRandomBytes(3 * parameters.maxSize + 12345, seed: 7)
        let lengths = try chunkLengths(data, parameters)
        #expect(lengths.reduce(0, +) == data.count)
        for length in lengths.dropLast() {
            #expect(length >= parameters.minSize)
            #expect(length <= parameters.maxSize)
        }
        #expect(lengths.last! <= parameters.maxSize)
    }

    @Test func zerosAreCutAtTheMaximum() throws {
        let data = [UInt8](repeating: 0, count: 100_000)
        let lengths = try chunkLengths(data, small)
        #expect(lengths == [32768, 32768, 32768, 1696])
    }

    @Test func emptyStreamHasNoChunks() throws {
        #expect(try chunkLengths([], small) == [])
    }

    /// Inserting one byte near the start of a 64 MiB stream changes at most 3 chunks.
    @Test(arguments: [ChunkerParameters.files, .database])
    func insertionChangesFewChunks(_ parameters: ChunkerParameters) throws {
        var data = pseudoRandomBytes(64 << 20, seed: 3)
        func chunkIDs() throws -> [ObjectID] {
            let chunker = StreamChunker(parameters)
            var ids: [ObjectID] = []
            try data.withUnsafeBytes { raw in
                try chunker.append(raw) { ids.append(ObjectID(hashing: $0)) }
                try chunker.finish { ids.append(ObjectID(hashing: $0)) }
            }
            return ids
        }
        let before = try chunkIDs()
        data.insert(0xAB, at: 1000)
        let after = try chunkIDs()
        let changed = Set(after).subtracting(before)
        #expect(before.count > 50)
        #expect(changed.count <= 3, "\(changed.count) of \(after.count) chunks changed")
    }

    @Test func pulledAndPushedStreamsAgree() throws {
        let data = pseudoRandomBytes(2 << 20, seed: 9)
        let pushed = try chunkLengths(data, small)
        let chunker = StreamChunker(small)
        var pulled: [Int] = []
        // A pipe hands over odd-sized pieces.
        try chunker.consume(read: memorySource(data, chunk: 5000), onChunk: { pulled.append($0.count) })
        #expect(pulled == pushed)
        #expect(chunker.totalBytes == UInt64(data.count))
    }

    @Test func invalidParametersAreRejected() {
        #expect(throws: SnapError.self) {
            try ChunkerParameters(minSize: 4096, averageSize: 3000, maxSize: 8192).validate()
        }
        #expect(throws: SnapError.self) {
            try ChunkerParameters(minSize: 16384, averageSize: 8192, maxSize: 65536).validate()
        }
        #expect(throws: Never.self) { try ChunkerParameters.files.validate() }
    }
}
