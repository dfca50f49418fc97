import Foundation
import SnapArchive
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Throughput of TarWriter + ParallelGzipWriter over the regular files of a folder. Off unless
/// SNAP_ARCHIVE_BENCH_DIR is set; run it in a release build:
///
///     SNAP_ARCHIVE_BENCH_DIR=/some/folder swift test -c release -Xswiftc -enable-testing \
///         --scratch-path .build-archive --filter SnapArchiveTests.Benchmark
///
/// Optional: SNAP_ARCHIVE_BENCH_LEVEL (6), _BLOCK (bytes), _WORKERS (cores), _STORE (1 = store
/// random-looking blocks), _OUT (output file, default /dev/null-like counting only).
@Suite struct Benchmark {
    static let environment = ProcessInfo.processInfo.environment

    @Test(.enabled(if: environment["SNAP_ARCHIVE_BENCH_DIR"] != nil))
    func tarGzipThroughput() throws {
        let env = Self.environment
        let folder = env["SNAP_ARCHIVE_BENCH_DIR"]!
        let level = Int(env["SNAP_ARCHIVE_BENCH_LEVEL"] ?? "") ?? 6
        let blockSize = Int(env["SNAP_ARCHIVE_BENCH_BLOCK"] ?? "") ?? ParallelGzipWriter.defaultBlockSize
        let workers = Int(env["SNAP_ARCHIVE_BENCH_WORKERS"] ?? "") ?? ProcessInfo.processInfo.activeProcessorCount
        let store = (env["SNAP_ARCHIVE_BENCH_STORE"] ?? "1") == "1"
        let outPath = env["SNAP_ARCHIVE_BENCH_OUT"]

        let names = try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
        let out = outPath.map { open($0, O_WRONLY | O_CREAT | O_TRUNC, 0o644) } ?? -1
        defer { if out >= 0 { close(out) } }

        let start = DispatchTime.now()
        let gzip = ParallelGzipWriter(level: level, workers: workers, blockSize: blockSize, storeIncompressible: store)
        { bytes in
            guard out >= 0 else { return }
            var offset = 0
            while offset < bytes.count {
                let n = write(out, bytes.baseAddress! + offset, bytes.count - offset)
                guard n > 0 else { throw POSIXError(.EIO) }
                offset += n
            }
        }
        let tar = TarWriter { try gzip.write($0) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        for name in names {
            let path = folder + "/" + name
            let status = try DiskStatus(path)
            guard status.type == S_IFREG else { continue }
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw POSIXError(.ENOENT) }
            defer { close(fd) }
            try tar.beginFile(path: name, mode: status.mode, mtime: status.mtime, size: UInt64(status.size))
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard n >= 0 else { throw POSIXError(.EIO) }
                if n == 0 { break }
                try buffer.withUnsafeBytes { try tar.writeContent(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
            try tar.endFile()
        }
        try tar.finish()
        try gzip.finish()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
        let megabytes = Double(gzip.bytesIn) / 1e6
        print(
            String(
                format:
                    "bench level=%d block=%d workers=%d store=%d: %.1f MB in %.2f s = %.1f MB/s, out %d bytes (%.2f%%)",
                level, blockSize, workers, store ? 1 : 0, megabytes, seconds, megabytes / seconds, gzip.bytesOut,
                100 * Double(gzip.bytesOut) / Double(gzip.bytesIn)))

        // Read it back: GzipReader + TarReader, content discarded.
        guard let outPath else { return }
        let input = open(outPath, O_RDONLY)
        defer { close(input) }
        let readStart = DispatchTime.now()
        let gunzip = GzipReader { buffer in
            let n = read(input, buffer.baseAddress, buffer.count)
            guard n >= 0 else { throw POSIXError(.EIO) }
            return n
        }
        let reader = TarReader { try gunzip.read(into: $0) }
        var entries = 0
        while try reader.next() != nil {
            entries += 1
            while try buffer.withUnsafeMutableBytes({ try reader.readContent(into: $0) }) > 0 {}
        }
        let readSeconds = Double(DispatchTime.now().uptimeNanoseconds - readStart.uptimeNanoseconds) / 1e9
        print(
            String(
                format: "bench read back %d entries, %.1f MB in %.2f s = %.1f MB/s", entries,
                Double(gunzip.bytesOut) / 1e6, readSeconds, Double(gunzip.bytesOut) / 1e6 / readSeconds))
    }
}
