import Foundation
import SnapArchive
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// One entry of the sample archive.
struct Sample {
    enum Content {
        case file([UInt8])
        case directory
        case symlink(String)
    }

    var path: String
    var content: Content
    var mode: UInt32
    var mtime: Int64

    var kind: TarEntryKind {
        switch content {
        case .file: .file
        case .directory: .directory
        case .symlink: .symlink
        }
    }

    var bytes: [UInt8] {
        if case .file(let bytes) = content { return bytes }
        return []
    }

    var target: String? {
        if case .symlink(let target) = content { return target }
        return nil
    }
}

/// Files of every shape: empty, small, multi-MiB random and text, long and non-ASCII names,
/// special modes, nanosecond (and pre-1970) mtimes, empty folders, all kinds of symlinks.
func sampleEntries() -> [Sample] {
    let t: Int64 = 1_700_000_000_123_456_789
    let longDir = "top/long-" + String(repeating: "d", count: 130)
    let longFile = longDir + "/" + String(repeating: "f", count: 300 - longDir.utf8.count - 1)
    let splitDir = "top/p" + String(repeating: "x", count: 90)
    return [
        Sample(path: "top", content: .directory, mode: 0o755, mtime: t),
        Sample(path: "top/empty.txt", content: .file([]), mode: 0o644, mtime: t + 1),
        Sample(
            path: "top/hello.txt", content: .file(Array("hello\n".utf8)), mode: 0o600, mtime: 1_600_000_000_000_000_000),
        Sample(
            path: "top/random.bin", content: .file(pseudoRandomBytes(3_000_001, seed: 7)), mode: 0o644, mtime: t + 2),
        Sample(
            path: "top/text.log", content: .file(textBytes(2_500_000, seed: 8)), mode: 0o640, mtime: t + 999_999_999),
        Sample(
            path: "top/exact-512", content: .file(pseudoRandomBytes(512, seed: 9)), mode: 0o444,
            mtime: 86_400_000_000_001),
        Sample(path: "top/old-1980", content: .file(Array("old".utf8)), mode: 0o644, mtime: 315_532_800_000_000_001),
        Sample(path: "top/empty-dir", content: .directory, mode: 0o700, mtime: t + 3),
        Sample(path: "top/sticky-dir", content: .directory, mode: 0o1777, mtime: t + 4),
        Sample(path: "top/setuid", content: .file(Array("#!/bin/sh\n".utf8)), mode: 0o4755, mtime: t + 5),
        Sample(path: "top/setgid", content: .file(Array("#!/bin/sh\n".utf8)), mode: 0o2750, mtime: t + 6),
        Sample(path: longDir, content: .directory, mode: 0o755, mtime: t + 7),
        Sample(path: longFile, content: .file(Array("three hundred bytes of path\n".utf8)), mode: 0o644, mtime: t + 8),
        Sample(path: splitDir, content: .directory, mode: 0o755, mtime: t + 9),
        Sample(
            path: splitDir + "/" + String(repeating: "y", count: 60), content: .file([1, 2, 3]), mode: 0o644, mtime: t),
        Sample(path: "top/日本語のファイル.txt", content: .file(Array("こんにちは\n".utf8)), mode: 0o644, mtime: t + 10),
        Sample(path: "top/emoji-😀🎉", content: .directory, mode: 0o755, mtime: t + 11),
        Sample(path: "top/emoji-😀🎉/ünïcødé", content: .file(Array("x".utf8)), mode: 0o644, mtime: t + 12),
        Sample(path: "top/link-rel", content: .symlink("hello.txt"), mode: 0o777, mtime: t + 13),
        Sample(path: "top/link-abs", content: .symlink("/nonexistent/dangling"), mode: 0o777, mtime: t + 14),
        Sample(
            path: "top/link-long", content: .symlink("../" + String(repeating: "t", count: 150)), mode: 0o777,
            mtime: t + 15),
        Sample(path: "top/link-utf", content: .symlink("日本語のファイル.txt"), mode: 0o777, mtime: t + 16),
    ]
}

/// Writes the samples with `TarWriter` through `ParallelGzipWriter` into `path`; returns the tar bytes.
@discardableResult
func writeSampleArchive(_ samples: [Sample], to path: String, blockSize: Int = 128 << 10) throws -> [UInt8] {
    guard let file = fopen(path, "wb") else { throw POSIXError(.EIO) }
    defer { fclose(file) }
    var tarBytes = [UInt8]()
    let gzip = ParallelGzipWriter(level: 6, workers: 2, blockSize: blockSize) { bytes in
        guard fwrite(bytes.baseAddress, 1, bytes.count, file) == bytes.count else { throw POSIXError(.EIO) }
    }
    let tar = TarWriter { bytes in
        tarBytes += bytes
        try gzip.write(bytes)
    }
    for sample in samples {
        switch sample.content {
        case .directory:
            try tar.appendDirectory(path: sample.path, mode: sample.mode, mtime: sample.mtime)
        case .symlink(let target):
            try tar.appendSymlink(path: sample.path, target: target, mode: sample.mode, mtime: sample.mtime)
        case .file(let bytes):
            try tar.beginFile(path: sample.path, mode: sample.mode, mtime: sample.mtime, size: UInt64(bytes.count))
            try bytes.withUnsafeBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let end = min(raw.count, offset + 100_000)
                    try tar.writeContent(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
                    offset = end
                }
            }
            try tar.endFile()
        }
    }
    try tar.finish()
    try gzip.finish()
    #expect(tarBytes.count % 10_240 == 0)
    return tarBytes
}

/// Reads a .tar.gz with `GzipReader` + `TarReader`: every entry with its content.
func readArchive(_ path: String) throws -> [(entry: TarHeaderEntry, content: [UInt8])] {
    guard let file = fopen(path, "rb") else { throw POSIXError(.ENOENT) }
    defer { fclose(file) }
    let gunzip = GzipReader { buffer in
        let n = fread(buffer.baseAddress, 1, buffer.count, file)
        if n == 0 && ferror(file) != 0 { throw POSIXError(.EIO) }
        return n
    }
    let tar = TarReader { try gunzip.read(into: $0) }
    var result: [(TarHeaderEntry, [UInt8])] = []
    var buffer = [UInt8](repeating: 0, count: 70_000)
    while let entry = try tar.next() {
        var content = [UInt8]()
        while true {
            let n = try buffer.withUnsafeMutableBytes { try tar.readContent(into: $0) }
            if n == 0 { break }
            content += buffer[0..<n]
        }
        #expect(UInt64(content.count) == entry.size)
        result.append((entry, content))
    }
    return result
}

@Suite struct InteropTests {
    let samples = sampleEntries()

    @Test func gnuTarExtractsEverythingExactly() throws {
        let folder = try TemporaryDirectory()
        let archive = folder.file("sample.tar.gz")
        try writeSampleArchive(samples, to: archive)
        try FileManager.default.createDirectory(atPath: folder.file("out"), withIntermediateDirectories: false)

        let result = try run(["tar", "-xzf", archive, "-C", folder.file("out")])
        #expect(result.status == 0)
        #expect(result.stderr == "")

        for sample in samples {
            let path = folder.file("out/" + sample.path)
            let status = try DiskStatus(path)
            switch sample.content {
            case .file(let bytes):
                #expect(status.type == S_IFREG, "\(sample.path)")
                #expect(try readFile(path) == bytes, "\(sample.path)")
            case .directory:
                #expect(status.type == S_IFDIR, "\(sample.path)")
            case .symlink(let target):
                #expect(status.type == S_IFLNK, "\(sample.path)")
                #expect(try readLink(path) == target, "\(sample.path)")
            }
            if sample.kind != .symlink {
                #expect(String(status.mode, radix: 8) == String(sample.mode, radix: 8), "\(sample.path)")
            }
            // GNU tar applies the pax mtime with its nanoseconds.
            #expect(status.mtime == sample.mtime, "\(sample.path)")
        }
        // Nothing extra: exactly the sample entries.
        let listed = try run(["tar", "-tzf", archive])
        #expect(listed.stderr == "")
        let names = listed.output.split(separator: "\n").map { String($0) }
        #expect(names.count == samples.count)
    }

    @Test func pythonTarfileListsWithoutWarnings() throws {
        let folder = try TemporaryDirectory()
        let archive = folder.file("sample.tar.gz")
        try writeSampleArchive(samples, to: archive)
        let script = """
            import sys, tarfile
            with tarfile.open(sys.argv[1], "r:gz") as tar:
                for m in tar:
                    kind = "d" if m.isdir() else "l" if m.issym() else "f" if m.isfile() else "?"
                    data = tar.extractfile(m).read() if m.isfile() else b""
                    assert len(data) == m.size
                    print(f"{m.name}\\t{kind}\\t{m.size}\\t{m.mode:o}\\t{m.linkname}\\t{m.mtime!r}")
            """
        let result = try run(
            ["python3", "-W", "error", "-c", script, archive], environment: ["PYTHONIOENCODING": "utf-8"])
        #expect(result.status == 0)
        #expect(result.stderr == "")
        let lines = result.output.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == samples.count)
        for (line, sample) in zip(lines, samples) {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            let kind = sample.kind == .directory ? "d" : sample.kind == .symlink ? "l" : "f"
            #expect(fields[0] == sample.path)
            #expect(fields[1] == kind, "\(sample.path)")
            #expect(fields[2] == String(sample.bytes.count), "\(sample.path)")
            #expect(fields[3] == String(sample.mode, radix: 8), "\(sample.path)")
            #expect(fields[4] == (sample.target ?? ""), "\(sample.path)")
            #expect(Int64(Double(fields[5])!.rounded(.down)) == Int64(floor(Double(sample.mtime) / 1e9)))
        }
    }

    @Test func ownReadersRoundTripExactly() throws {
        let folder = try TemporaryDirectory()
        let archive = folder.file("sample.tar.gz")
        let tarBytes = try writeSampleArchive(samples, to: archive, blockSize: 32 << 10)
        let entries = try readArchive(archive)
        #expect(entries.count == samples.count)
        for ((entry, content), sample) in zip(entries, samples) {
            #expect(entry.path == sample.path)
            #expect(entry.kind == sample.kind, "\(sample.path)")
            #expect(entry.mode == sample.mode, "\(sample.path)")
            #expect(entry.mtime == sample.mtime, "\(sample.path)")
            #expect(entry.size == UInt64(sample.bytes.count), "\(sample.path)")
            #expect(entry.linkTarget == sample.target, "\(sample.path)")
            #expect(content == sample.bytes, "\(sample.path)")
        }
        // gzip agrees: the stream is valid, and it holds exactly the tar bytes.
        let test = try run(["gzip", "-t", archive])
        #expect(test.status == 0)
        #expect(test.stderr == "")
        let decompressed = try run(["gzip", "-dc", archive])
        #expect(decompressed.status == 0)
        #expect(decompressed.stderr == "")
        #expect(decompressed.stdout == tarBytes)
    }

    @Test(arguments: ["pax", "gnu"])
    func readsArchivesFromGnuTar(format: String) throws {
        let folder = try TemporaryDirectory()
        let root = folder.file("tree")
        let longName = String(repeating: "n", count: 120) + "/" + String(repeating: "m", count: 200) + ".txt"
        let files: [(String, [UInt8])] = [
            ("a.txt", Array("alpha\n".utf8)),
            ("empty", []),
            ("sub/data.bin", pseudoRandomBytes(200_000, seed: 3)),
            (longName, Array("long\n".utf8)),
            ("sub/日本語-😀.txt", Array("utf\n".utf8)),
        ]
        for (name, bytes) in files {
            let path = root + "/" + name
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try writeFile(path, bytes)
        }
        try FileManager.default.createDirectory(atPath: root + "/empty-dir", withIntermediateDirectories: true)
        let longTarget = "../" + String(repeating: "q", count: 140)
        try FileManager.default.createSymbolicLink(atPath: root + "/sub/long-link", withDestinationPath: longTarget)
        try FileManager.default.createSymbolicLink(atPath: root + "/short-link", withDestinationPath: "a.txt")
        #expect(link(root + "/a.txt", root + "/hard") == 0)
        #expect(mkfifo(root + "/fifo", 0o644) == 0)
        #expect(chmod(root + "/a.txt", 0o4755) == 0)
        try setMtime(root + "/a.txt", 1_650_000_000_987_654_321)

        let archive = folder.file("system.tar.gz")
        let result = try run(["tar", "--format=\(format)", "-czf", archive, "-C", root, "."])
        #expect(result.status == 0)
        #expect(result.stderr == "")

        let entries = try readArchive(archive)
        var byPath: [String: (entry: TarHeaderEntry, content: [UInt8])] = [:]
        for item in entries { byPath[item.entry.path] = item }
        // One of "a.txt" and "hard" is stored as a hard link to the other, depending on directory order.
        let hard = [byPath["./hard"]!, byPath["./a.txt"]!].filter { $0.entry.kind == .hardlink }
        #expect(hard.count == 1)
        #expect(hard.first?.entry.linkTarget == "./a.txt" || hard.first?.entry.linkTarget == "./hard")
        for (name, bytes) in files {
            let item = try #require(byPath["./" + name], "\(name)")
            if item.entry.kind == .hardlink { continue }
            #expect(item.entry.kind == .file)
            #expect(item.content == bytes, "\(name)")
            let disk = try DiskStatus(root + "/" + name)
            #expect(item.entry.mode == disk.mode, "\(name)")
            if format == "pax" {
                #expect(item.entry.mtime == disk.mtime, "\(name)")
            } else {
                #expect(item.entry.mtime == disk.mtime / 1_000_000_000 * 1_000_000_000, "\(name)")
            }
        }
        #expect(byPath["."]?.entry.kind == .directory)
        #expect(byPath["./empty-dir"]?.entry.kind == .directory)
        #expect(byPath["./sub/long-link"]?.entry.kind == .symlink)
        #expect(byPath["./sub/long-link"]?.entry.linkTarget == longTarget)
        #expect(byPath["./short-link"]?.entry.linkTarget == "a.txt")
        #expect(byPath["./fifo"]?.entry.kind == .other("6"))
        #expect(entries.count == files.count + 6 + 2)  // + ., sub, n…, empty-dir, 2 links; + hard, fifo
    }
}
