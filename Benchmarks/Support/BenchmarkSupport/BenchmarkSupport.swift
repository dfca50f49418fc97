import Dispatch
import Foundation

/// Test data shared by the benchmark executables. Everything is generated from fixed seeds, so
/// every run (and every machine) benchmarks the same bytes.

/// 64 MiB: the amount of data each benchmark iteration processes.
public let benchmarkDataSize = 64 << 20

/// xoshiro256** (public domain, Blackman & Vigna), seeded through SplitMix64.
public struct Xoshiro256: RandomNumberGenerator {
    var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64) {
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        (s0, s1, s2, s3) = (next(), next(), next(), next())
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = s3 << 45 | s3 >> 19
        return result
    }
}

/// A buffer of 16-byte aligned memory that lives for the whole process (benchmarks share it).
public final class TestData: @unchecked Sendable {
    public let bytes: UnsafeRawBufferPointer
    private let storage: UnsafeMutableRawBufferPointer

    init(count: Int, fill: (UnsafeMutableRawBufferPointer) -> Void) {
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        fill(storage)
        bytes = UnsafeRawBufferPointer(storage)
    }

    deinit { storage.deallocate() }

    /// `count` uniformly random bytes: incompressible, no long repeats.
    public static func random(count: Int = benchmarkDataSize, seed: UInt64 = 0x5EED_0001) -> TestData {
        TestData(count: count) { buffer in
            var generator = Xoshiro256(seed: seed)
            let words = buffer.bindMemory(to: UInt64.self)
            for index in words.indices { words[index] = generator.next() }
            for index in (words.count * 8)..<buffer.count {
                buffer[index] = UInt8(truncatingIfNeeded: generator.next())
            }
        }
    }

    /// `count` bytes of log-like text: timestamps, levels, words from a 2,000-word vocabulary
    /// picked with a skewed (roughly Zipf) distribution, and random numbers. zstd -3 shrinks it
    /// to about a third, which is typical of application logs, CSV and JSON exports.
    public static func text(count: Int = benchmarkDataSize, seed: UInt64 = 0x5EED_0002) -> TestData {
        TestData(count: count) { buffer in
            var generator = Xoshiro256(seed: seed)
            let letters = Array("etaoinshrdlucmfwypvbgkjqxz".utf8)
            var vocabulary: [[UInt8]] = []
            for _ in 0..<2000 {
                let length = 2 + Int(generator.next() % 9)
                // Skewed letter choice, like English text.
                vocabulary.append(
                    (0..<length).map { _ in
                        let r = Int(generator.next() % 676)
                        return letters[min(25, Int(Double(r).squareRoot()))]
                    })
            }
            let levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"].map { Array($0.utf8) }
            var out = 0
            func put(_ bytes: [UInt8]) {
                for byte in bytes where out < buffer.count {
                    buffer[out] = byte
                    out += 1
                }
            }
            func putNumber(_ value: UInt64, width: Int) {
                var digits = [UInt8](repeating: UInt8(ascii: "0"), count: width)
                var v = value
                for i in stride(from: width - 1, through: 0, by: -1) {
                    digits[i] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
                put(digits)
            }
            var seconds: UInt64 = 0
            while out < buffer.count {
                seconds += generator.next() % 3
                put(Array("2026-11-27T".utf8))
                putNumber(seconds / 3600 % 24, width: 2)
                put([UInt8(ascii: ":")])
                putNumber(seconds / 60 % 60, width: 2)
                put([UInt8(ascii: ":")])
                putNumber(seconds % 60, width: 2)
                put([UInt8(ascii: ".")])
                putNumber(generator.next() % 1_000_000, width: 6)
                put(Array("Z ".utf8))
                put(levels[Int(generator.next() % UInt64(levels.count))])
                put(Array(" worker-".utf8))
                putNumber(generator.next() % 16, width: 2)
                let words = 4 + Int(generator.next() % 12)
                for _ in 0..<words {
                    put([UInt8(ascii: " ")])
                    // Squaring a uniform value skews the picks towards the start of the list.
                    let u = Double(generator.next() % 1_000_000) / 1_000_000
                    put(vocabulary[Int(u * u * u * Double(vocabulary.count))])
                }
                put(Array(" id=".utf8))
                putNumber(generator.next() % 100_000_000, width: 8)
                put(Array(" ms=".utf8))
                putNumber(generator.next() % 1000, width: 3)
                put([UInt8(ascii: "\n")])
            }
        }
    }

    /// Non-overlapping pieces of `size` bytes (the last one may be shorter).
    public func pieces(of size: Int) -> [UnsafeRawBufferPointer] {
        stride(from: 0, to: bytes.count, by: size).map {
            UnsafeRawBufferPointer(rebasing: bytes[$0..<min($0 + size, bytes.count)])
        }
    }
}

/// Megabytes (10^6 bytes) per second for `bytes` processed in `elapsed`.
public func megabytesPerSecond(_ bytes: Int, _ elapsed: Duration) -> Int {
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return Int((Double(bytes) / seconds / 1e6).rounded())
}

/// Human-readable byte count for setup messages.
public func mebibytes(_ bytes: Int) -> String { "\(bytes >> 20) MiB" }

/// Runs `body(0..<count)` on `count` new threads (like ObjectWriter's workers) and waits for all.
/// Plain threads rather than `DispatchQueue.concurrentPerform`, which can end up running every
/// index on the calling thread when the benchmark runner already occupies the dispatch pool.
public func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchSemaphore(value: 0)
    for index in 0..<count {
        let thread = Thread {
            body(index)
            done.signal()
        }
        thread.start()
    }
    for _ in 0..<count { done.wait() }
}
