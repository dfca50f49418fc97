import Benchmark
import BenchmarkSupport
import SnapCore

// FastCDC cut-point search over 64 MiB of random bytes, one core.
//
// "StreamChunker.consume" is the path a snapshot takes: bytes are read into the chunker's buffer
// (here copied from memory, standing in for a page-cache read) and cut there. "FastCDC.cut" cuts
// the data in place, without the copy, to show the cost of the gear-hash loop alone.

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
