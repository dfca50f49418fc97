import Benchmark
import BenchmarkSupport
import SnapCore

// SHA-256 through `ObjectID(hashing:)` (OpenSSL EVP_Digest) over 64 MiB of random bytes, one core:
// as one buffer, and as the chunk sizes a snapshot hashes (1 MiB: the `.files` average; 64 KiB:
// the `.database` average), where OpenSSL's per-call setup cost shows.

let megabytesPerSecondMetric = BenchmarkMetric.custom("MB/s", polarity: .prefersLarger, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, megabytesPerSecondMetric],
        units: [megabytesPerSecondMetric: .count],
        warmupIterations: 1,
        maxDuration: .seconds(5),
        maxIterations: 30
    )

    let data = TestData.random()
    let cases: [(name: String, pieceSize: Int)] = [
        ("one 64 MiB buffer", data.bytes.count),
        ("1 MiB chunks", 1 << 20),
        ("64 KiB chunks", 64 << 10),
    ]
    for (name, pieceSize) in cases {
        let pieces = data.pieces(of: pieceSize)
        Benchmark("SHA-256 ObjectID(hashing:) \(name)") { benchmark in
            let clock = ContinuousClock()
            let start = clock.now
            var last = ObjectID(hashing: [])
            for piece in pieces { last = ObjectID(hashing: piece) }
            benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, clock.now - start))
            blackHole(last)
        }
    }
}
