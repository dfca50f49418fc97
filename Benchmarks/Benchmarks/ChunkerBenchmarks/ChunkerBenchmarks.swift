import Benchmark
import BenchmarkSupport
import SnapCore

// FastCDC cut-point search over 64 MiB of random bytes, one core.
//
// "StreamChunker.consume" is the path a snapshot takes: bytes are read into the chunker's buffer
// (here copied from memory, standing in for a page-cache read) and cut there. "FastCDC.cut" cuts
// the data in place, without the copy, to show the cost of the gear-hash loop alone.
// "copy of cut loop" and "candidate cut loop" are copies of `FastCDC.cut` compiled in this target:
// the first is the loop as it is in SnapCore, the second a proposed faster loop. Before the first
// iteration both are checked to give exactly the cut points of SnapCore's `FastCDC.cut`.

let megabytesPerSecondMetric = BenchmarkMetric.custom("MB/s", polarity: .prefersLarger, useScalingFactor: false)
let chunksMetric = BenchmarkMetric.custom("chunks", polarity: .prefersLarger, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, megabytesPerSecondMetric, chunksMetric],
        units: [megabytesPerSecondMetric: .count, chunksMetric: .count],
        warmupIterations: 1,
        maxDuration: .seconds(5),
        maxIterations: 30
    )

    let data = TestData.random()
    let parameterSets: [(name: String, parameters: ChunkerParameters)] = [("files", .files), ("database", .database)]

    for (name, parameters) in parameterSets {
        Benchmark("StreamChunker.consume \(name) 64 MiB") { benchmark in
            let chunker = StreamChunker(parameters)
            var chunks = 0
            var offset = 0
            let clock = ContinuousClock()
            let start = clock.now
            do {
                try chunker.consume(
                    read: { buffer in
                        let n = min(buffer.count, data.bytes.count - offset)
                        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: data.bytes[offset..<offset + n]))
                        offset += n
                        return n
                    },
                    onChunk: { _ in chunks += 1 })
            } catch {
                benchmark.error("\(error)")
            }
            benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
            benchmark.measurement(chunksMetric, chunks)
            blackHole(chunks)
        }

        Benchmark("FastCDC.cut in place \(name) 64 MiB") { benchmark in
            let cdc = FastCDC(parameters)
            let clock = ContinuousClock()
            let start = clock.now
            let chunks = countChunks(data.bytes) { cdc.cut($0) }
            benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
            benchmark.measurement(chunksMetric, chunks)
            blackHole(chunks)
        }

        Benchmark("copy of cut loop \(name) 64 MiB") { benchmark in
            let cdc = CurrentCut(parameters)
            let clock = ContinuousClock()
            let start = clock.now
            let chunks = countChunks(data.bytes) { cdc.cut($0) }
            benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
            benchmark.measurement(chunksMetric, chunks)
            blackHole(chunks)
        } setup: {
            try verify(CurrentCut(parameters).cut, parameters)
        }

        Benchmark("candidate cut loop \(name) 64 MiB") { benchmark in
            let cdc = CandidateCut(parameters)
            let clock = ContinuousClock()
            let start = clock.now
            let chunks = countChunks(data.bytes) { cdc.cut($0) }
            benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
            benchmark.measurement(chunksMetric, chunks)
            blackHole(chunks)
        } setup: {
            try verify(CandidateCut(parameters).cut, parameters)
        }
    }
}

/// Cuts `bytes` from start to end with `cut`; returns the number of chunks.
@inline(__always)
func countChunks(_ bytes: UnsafeRawBufferPointer, _ cut: (UnsafeRawBufferPointer) -> Int) -> Int {
    var offset = 0
    var chunks = 0
    while offset < bytes.count {
        offset += cut(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
        chunks += 1
    }
    return chunks
}

/// All cut offsets of `bytes`.
func cutPoints(_ bytes: UnsafeRawBufferPointer, _ cut: (UnsafeRawBufferPointer) -> Int) -> [Int] {
    var offset = 0
    var points: [Int] = []
    while offset < bytes.count {
        offset += cut(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
        points.append(offset)
    }
    return points
}

struct CutPointMismatch: Error, CustomStringConvertible {
    var description: String
}

/// Checks that `cut` gives exactly SnapCore's cut points on random data, on log-like text, on
/// zeros (every chunk hits maxSize) and on short tails.
func verify(_ cut: (UnsafeRawBufferPointer) -> Int, _ parameters: ChunkerParameters) throws {
    let reference = FastCDC(parameters)
    let inputs: [(String, TestData)] = [
        ("random", TestData.random(count: 16 << 20, seed: 7)),
        ("text", TestData.text(count: 16 << 20, seed: 8)),
        ("zeros + random tail", TestData.random(count: 3 * parameters.maxSize + 12345, seed: 9)),
    ]
    for (name, input) in inputs {
        var bytes = input.bytes
        if name.hasPrefix("zeros") {
            let mutable = UnsafeMutableRawBufferPointer(mutating: bytes)
            mutable[0..<(2 * parameters.maxSize)].initializeMemory(as: UInt8.self, repeating: 0)
            bytes = UnsafeRawBufferPointer(mutable)
        }
        let expected = cutPoints(bytes) { reference.cut($0) }
        let actual = cutPoints(bytes) { cut($0) }
        guard expected == actual else {
            let first = zip(expected, actual).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(expected.count, actual.count)
            throw CutPointMismatch(description: "cut points differ on \(name) data at chunk \(first)")
        }
        // Every possible short tail: lengths around minSize, average and the end of the data.
        for length in [1, 63, parameters.minSize, parameters.minSize + 1, parameters.averageSize + 3, parameters.maxSize - 1] {
            let tail = UnsafeRawBufferPointer(rebasing: bytes[0..<min(length, bytes.count)])
            guard reference.cut(tail) == cut(tail) else {
                throw CutPointMismatch(description: "cut point differs on a \(length)-byte \(name) tail")
            }
        }
    }
}

/// The gear table of `docs/FORMAT.md`, rebuilt here because SnapCore's `GearTable` is internal.
nonisolated(unsafe) let gearTable: UnsafePointer<UInt64> = {
    let table = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
    var state: UInt64 = 0x736E_6170
    for index in 0..<256 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        table[index] = z ^ (z >> 31)
    }
    return UnsafePointer(table)
}()

/// `FastCDC.cut` exactly as in Sources/SnapCore/Chunker.swift.
struct CurrentCut {
    let parameters: ChunkerParameters
    let maskSmall: UInt64
    let maskLarge: UInt64

    init(_ parameters: ChunkerParameters) {
        self.parameters = parameters
        let bits = UInt64(parameters.averageSize.trailingZeroBitCount)
        maskSmall = ~UInt64(0) << (64 - (bits + 2))
        maskLarge = ~UInt64(0) << (64 - (bits - 2))
    }

    @inline(__always)
    func cut(_ bytes: UnsafeRawBufferPointer) -> Int {
        let count = bytes.count
        if count <= parameters.minSize { return count }
        let end = Swift.min(count, parameters.maxSize)
        let normal = Swift.min(parameters.averageSize, end)
        let data = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let gear = gearTable
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

/// The proposed loop; see docs/BENCHMARKS.md.
struct CandidateCut {
    let parameters: ChunkerParameters
    let maskSmall: UInt64
    let maskLarge: UInt64

    init(_ parameters: ChunkerParameters) {
        self.parameters = parameters
        let bits = UInt64(parameters.averageSize.trailingZeroBitCount)
        maskSmall = ~UInt64(0) << (64 - (bits + 2))
        maskLarge = ~UInt64(0) << (64 - (bits - 2))
    }

    @inline(__always)
    func cut(_ bytes: UnsafeRawBufferPointer) -> Int {
        let count = bytes.count
        if count <= parameters.minSize { return count }
        let end = Swift.min(count, parameters.maxSize)
        let normal = Swift.min(parameters.averageSize, end)
        let data = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let gear = gearTable
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
