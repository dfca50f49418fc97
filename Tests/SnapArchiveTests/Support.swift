import Foundation
import SnapArchive
import SnapTestSupport

#if canImport(Glibc)
    import Glibc
#endif

/// Compressible text: log-like lines built from a small vocabulary.
func textBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    let words = ["select", "insert", "user", "order", "id", "created_at", "payload", "null", "true", "42", "tenant"]
    let noise = pseudoRandomBytes(count / 4 + 16, seed: seed)
    var out = [UInt8]()
    out.reserveCapacity(count + 64)
    var index = 0
    while out.count < count {
        let word = words[Int(noise[index % noise.count]) % words.count]
        out += Array(word.utf8)
        out.append(noise[(index + 1) % noise.count] % 7 == 0 ? 0x0A : 0x20)
        index += 1
    }
    return Array(out.prefix(count))
}

struct ProcessResult {
    var status: Int32
    var stdout: [UInt8]
    var stderr: String
    var output: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs a program (found on PATH) and collects its output.
func run(_ arguments: [String], input: [UInt8]? = nil, environment: [String: String] = [:]) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { $1 }
    process.environment = env
    let out = Pipe()
    let err = Pipe()
    let inPipe = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = inPipe
    try process.run()
    let writer = Thread {
        if let input { inPipe.fileHandleForWriting.write(Data(input)) }
        try? inPipe.fileHandleForWriting.close()
    }
    writer.start()
    // Read stderr on its own thread so neither pipe can fill up and stall the child.
    nonisolated(unsafe) var errorData = Data()
    let done = DispatchSemaphore(value: 0)
    let reader = Thread {
        errorData = err.fileHandleForReading.readDataToEndOfFile()
        done.signal()
    }
    reader.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    process.waitUntilExit()
    return ProcessResult(
        status: process.terminationStatus, stdout: [UInt8](outData), stderr: String(decoding: errorData, as: UTF8.self))
}

func readFile(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Gzips `bytes` in memory with `ParallelGzipWriter`, writing in pieces of `piece` bytes.
func gzip(_ bytes: [UInt8], level: Int = 6, workers: Int = 2, blockSize: Int = 64 << 10, piece: Int = 100_000)
    throws -> [UInt8]
{
    var out = [UInt8]()
    let writer = ParallelGzipWriter(level: level, workers: workers, blockSize: blockSize) { out += $0 }
    try bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let end = min(raw.count, offset + piece)
            try writer.write(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
            offset = end
        }
    }
    try writer.finish()
    return out
}

/// Everything a `GzipReader` yields, read through a small buffer.
func gunzip(_ bytes: [UInt8], chunk: Int = .max, readSize: Int = 50_000) throws -> [UInt8] {
    let reader = GzipReader(source: memorySource(bytes, chunk: chunk))
    var out = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: readSize)
    while true {
        let n = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
        if n == 0 { return out }
        out += buffer[0..<n]
    }
}

/// File facts via `lstat`.
struct DiskStatus {
    var type: mode_t
    var mode: UInt32
    var mtime: Int64
    var size: Int

    init(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        type = st.st_mode & S_IFMT
        mode = UInt32(st.st_mode & 0o7777)
        mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        size = Int(st.st_size)
    }
}

func readLink(_ path: String) throws -> String {
    try FileManager.default.destinationOfSymbolicLink(atPath: path)
}

/// Sets a file's mtime (not following symlinks).
func setMtime(_ path: String, _ nanoseconds: Int64) throws {
    let (s, r) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
    let spec =
        r < 0
        ? timespec(tv_sec: Int(s - 1), tv_nsec: Int(r + 1_000_000_000)) : timespec(tv_sec: Int(s), tv_nsec: Int(r))
    var times = [spec, spec]
    guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else { throw POSIXError(.EIO) }
}
