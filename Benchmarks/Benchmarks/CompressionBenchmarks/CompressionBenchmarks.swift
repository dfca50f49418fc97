import Benchmark
import BenchmarkSupport
import SnapCore

// zstd level 3 through `ZstdCompressor` (one frame per chunk, as ObjectWriter does) over 64 MiB,
// on compressible log-like text and on incompressible random bytes, in 1 MiB chunks (the `.files`
// average) and 64 KiB chunks (the `.database` average). One core, except the "2 threads" case,
// which compresses half the chunks on each of the machine's two cores as ObjectWriter's workers do.

let megabytesPerSecondMetric = BenchmarkMetric.custom("MB/s", polarity: .prefersLarger, useScalingFactor: false)
let ratioMetric = BenchmarkMetric.custom("output % of input", polarity: .prefersSmaller, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, megabytesPerSecondMetric, ratioMetric],
        units: [megabytesPerSecondMetric: .count, ratioMetric: .count],
        warmupIterations: 1,
        maxDuration: .seconds(10),
        maxIterations: 20
    )

    let inputs: [(name: String, data: TestData)] = [("text", TestData.text()), ("random", TestData.random())]
    for (dataName, data) in inputs {
        for (sizeName, pieceSize) in [("1 MiB", 1 << 20), ("64 KiB", 64 << 10)] {
            let pieces = data.pieces(of: pieceSize)
            Benchmark("zstd -3 \(dataName) \(sizeName) chunks") { benchmark in
                let compressor = ZstdCompressor(level: 3)
                let clock = ContinuousClock()
                let start = clock.now
                var output = 0
                for piece in pieces { output += compressor.compress(piece).count }
                benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
                benchmark.measurement(ratioMetric, output * 100 / data.bytes.count)
            }
        }
        nonisolated(unsafe) let pieces = data.pieces(of: 1 << 20)
        Benchmark("zstd -3 \(dataName) 1 MiB chunks, 2 threads") { benchmark in
            let clock = ContinuousClock()
            let start = clock.now
            onThreads(2) { thread in
                let compressor = ZstdCompressor(level: 3)
                for index in stride(from: thread, to: pieces.count, by: 2) {
                    blackHole(compressor.compress(pieces[index]).count)
                }
            }
            benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
        }
    }
}
