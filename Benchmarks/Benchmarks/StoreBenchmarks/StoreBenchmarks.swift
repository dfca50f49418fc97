import Benchmark
import BenchmarkSupport
import Foundation
import SnapCore
import Synchronization

// Object writes through `LocalObjectStore.put` plus the closing `flush`, which together write each
// object to a temporary file, make it durable and link it into place, then fsync the folders that
// changed (however the store batches that): 64 MiB of random bytes as 64 objects
// of 1 MiB or 1,024 objects of 64 KiB, single-threaded and on two threads (ObjectWriter's workers
// on this two-core machine), into a folder under $SNAP_BENCH_TMPDIR (default /var/tmp: it should
// sit on the disk a repository would use; see docs/BENCHMARKS.md on why not /tmp here). The store
// and its 256 fan-out folders persist across iterations, as in a repository in use. Nothing is
// deleted until teardown: each iteration stores the same bytes under new names (the SHA-256 of
// the iteration and object number; the store does not check names against content), because on
// a journal-less ext4 (this VM's disk) creating files right after deleting many is much slower.

let megabytesPerSecondMetric = BenchmarkMetric.custom("MB/s", polarity: .prefersLarger, useScalingFactor: false)
let objectsPerSecondMetric = BenchmarkMetric.custom("objects/s", polarity: .prefersLarger, useScalingFactor: false)

/// A temporary repository-like folder, removed at teardown.
final class Scratch: @unchecked Sendable {
    let path: String
    let store: LocalObjectStore

    init(_ name: String) throws {
        let base = ProcessInfo.processInfo.environment["SNAP_BENCH_TMPDIR"] ?? "/var/tmp"
        path = (base as NSString).appendingPathComponent("snap-bench-\(name)-\(getpid())")
        try FileManager.default.createDirectory(atPath: path + "/objects", withIntermediateDirectories: true)
        store = LocalObjectStore(root: path + "/objects")
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, megabytesPerSecondMetric, objectsPerSecondMetric],
        units: [megabytesPerSecondMetric: .count, objectsPerSecondMetric: .count],
        warmupIterations: 1,
        maxDuration: .seconds(10),
        maxIterations: 20
    )

    let data = TestData.random()
    for (sizeName, pieceSize) in [("1 MiB", 1 << 20), ("64 KiB", 64 << 10)] {
        let contents = data.pieces(of: pieceSize).map { [UInt8]($0) }
        for threads in [1, 2] {
            let name =
                "LocalObjectStore.put \(contents.count) x \(sizeName)\(threads > 1 ? ", \(threads) threads" : "")"
            nonisolated(unsafe) var scratch: Scratch?
            nonisolated(unsafe) var iteration: UInt64 = 0
            Benchmark(name) { benchmark in
                guard let store = scratch?.store else { return benchmark.error("no scratch folder") }
                iteration += 1
                let objects = contents.enumerated().map { index, encoded in
                    (id: withUnsafeBytes(of: (iteration, UInt64(index))) { ObjectID(hashing: $0) }, encoded: encoded)
                }
                benchmark.startMeasurement()
                let clock = ContinuousClock()
                let start = clock.now
                let written = Mutex(0)
                do {
                    if threads == 1 {
                        var count = 0
                        for object in objects where try store.put(object.id, encoded: object.encoded) { count += 1 }
                        written.withLock { $0 = count }
                    } else {
                        let failure = Mutex<(any Error)?>(nil)
                        onThreads(threads) { thread in
                            for index in stride(from: thread, to: objects.count, by: threads) {
                                do {
                                    if try store.put(objects[index].id, encoded: objects[index].encoded) {
                                        written.withLock { $0 += 1 }
                                    }
                                } catch {
                                    failure.withLock { $0 = error }
                                }
                            }
                        }
                        if let error = failure.withLock({ $0 }) { throw error }
                    }
                    try store.flush()
                } catch {
                    benchmark.error("\(error)")
                }
                let elapsed = clock.now - start
                benchmark.stopMeasurement()
                if written.withLock({ $0 }) != objects.count { benchmark.error("some objects were not written") }
                benchmark.measurement(megabytesPerSecondMetric, megabytesPerSecond(data.bytes.count, elapsed))
                benchmark.measurement(objectsPerSecondMetric, megabytesPerSecond(objects.count * 1_000_000, elapsed))
            } setup: {
                scratch = try Scratch("\(pieceSize)-\(threads)")
            } teardown: {
                scratch?.remove()
                scratch = nil
            }
        }
    }
}
