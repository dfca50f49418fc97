import Foundation
import SnapCore
import SnapTestSupport
import Testing

@testable import SnapArchive

/// Collects what a `TarWriter` emits.
final class ByteSink {
    var bytes: [UInt8] = []
    func append(_ raw: UnsafeRawBufferPointer) { bytes += raw }
}

func tarFields(_ header: [UInt8], _ range: Range<Int>) -> String {
    String(decoding: header[range], as: UTF8.self)
}

@Suite struct TarWriterTests {
    @Test func ustarHeaderLayout() throws {
        let sink = ByteSink()
        let tar = TarWriter(sink: sink.append)
        try Array("abc".utf8).withUnsafeBytes {
            try tar.appendFile(path: "dir/file.txt", mode: 0o4755, mtime: 1_700_000_000_000_000_000, contents: $0)
        }
        try tar.finish()
        let header = Array(sink.bytes[0..<512])
        #expect(tarFields(header, 0..<13) == "dir/file.txt\0")
        #expect(tarFields(header, 100..<108) == "0004755\0")
        #expect(tarFields(header, 108..<124) == "0000000\u{0}0000000\u{0}")
        #expect(tarFields(header, 124..<136) == "00000000003\0")
        #expect(tarFields(header, 136..<148) == String(1_700_000_000, radix: 8) + "\0")
        #expect(header[156] == UInt8(ascii: "0"))
        #expect(tarFields(header, 257..<265) == "ustar\u{0}00")
        #expect(tarFields(header, 265..<270) == "root\0")
        #expect(tarFields(header, 297..<302) == "root\0")
        let checksum = header.withUnsafeBytes { Tar.checksums($0).unsigned }
        #expect(
            tarFields(header, 148..<156) == String(repeating: "0", count: 6 - String(checksum, radix: 8).count)
                + String(checksum, radix: 8) + "\0 ")
        #expect(Array(sink.bytes[512..<515]) == Array("abc".utf8))
        #expect(sink.bytes[515..<1024].allSatisfy { $0 == 0 })
        #expect(sink.bytes.count == 10_240)
        #expect(tar.bytesWritten == 10_240)
    }

    @Test func sizeOfEightGiBGetsAPaxRecord() throws {
        let sink = ByteSink()
        let tar = TarWriter(sink: sink.append)
        try tar.beginFile(path: "huge.bin", mode: 0o644, mtime: 1_000_000_000, size: 8_589_934_592)
        // pax header block, one block of records, then the ustar header.
        #expect(sink.bytes.count == 1536)
        let pax = Array(sink.bytes[0..<512])
        #expect(pax[156] == UInt8(ascii: "x"))
        #expect(tarFields(pax, 0..<20) == "PaxHeaders/huge.bin\0")
        #expect(tarFields(pax, 124..<136) == "00000000023\0")  // 19 bytes of records
        #expect(Array(sink.bytes[512..<532]) == Array("19 size=8589934592\n".utf8) + [0])
        let header = Array(sink.bytes[1024..<1536])
        #expect(tarFields(header, 124..<136) == "00000000000\0")
        #expect(header[156] == UInt8(ascii: "0"))

        // The reader takes the size from the pax record.
        let reader = TarReader(source: memorySource(sink.bytes))
        let entry = try #require(try reader.next())
        #expect(entry.path == "huge.bin")
        #expect(entry.size == 8_589_934_592)
        #expect(entry.mtime == 1_000_000_000)

        // One byte less still fits the octal field: no pax header.
        let small = ByteSink()
        try TarWriter(sink: small.append).beginFile(path: "big", mode: 0o644, mtime: 0, size: 8_589_934_591)
        #expect(small.bytes.count == 512)
        #expect(tarFields(small.bytes, 124..<136) == "77777777777\0")
    }

    @Test func paxRecordsAreLengthPrefixed() {
        #expect(TarWriter.paxRecord("path", Array("a".utf8)) == Array("9 path=a\n".utf8))
        // " path=" + value + "\n" = 98 bytes: with a 2-digit length it would be 100, so it is 101.
        let value = [UInt8](repeating: UInt8(ascii: "v"), count: 91)
        let record = TarWriter.paxRecord("path", value)
        #expect(record.count == 101)
        #expect(Array(record.prefix(4)) == Array("101 ".utf8))
        for count in 0..<2000 {
            let record = TarWriter.paxRecord("k", [UInt8](repeating: 0x41, count: count))
            let length = Int(String(decoding: record.prefix { $0 != 0x20 }, as: UTF8.self))!
            #expect(length == record.count)
        }
        #expect(TarWriter.paxTime(1_700_000_000_000_000_005) == "1700000000.000000005")
        #expect(TarWriter.paxTime(-1_500_000_000) == "-1.500000000")
        #expect(TarWriter.paxTime(-3_000_000_000) == "-3")
        #expect(TarReader.paxTime(Array("-1.5".utf8)) == -1_500_000_000)
        #expect(TarReader.paxTime(Array("12.0000000019".utf8)) == 12_000_000_001)
        #expect(TarReader.paxTime(Array("1x".utf8)) == nil)
    }

    @Test func paxOnlyWhenNeeded() throws {
        func headerCount(_ build: (TarWriter) throws -> Void) throws -> Int {
            let sink = ByteSink()
            try build(TarWriter(sink: sink.append))
            return sink.bytes.count / 512
        }
        #expect(try headerCount { try $0.appendDirectory(path: "plain", mode: 0o755, mtime: 5_000_000_000) } == 1)
        #expect(try headerCount { try $0.appendDirectory(path: "frac", mode: 0o755, mtime: 5_000_000_001) } == 3)
        #expect(try headerCount { try $0.appendDirectory(path: "neg", mode: 0o755, mtime: -5_000_000_000) } == 3)
        #expect(try headerCount { try $0.appendDirectory(path: "é", mode: 0o755, mtime: 0) } == 3)
        let name100 = String(repeating: "a", count: 100)
        #expect(try headerCount { try $0.appendSymlink(path: name100, target: name100, mtime: 0) } == 1)
        #expect(try headerCount { try $0.appendSymlink(path: "l", target: name100 + "b", mtime: 0) } == 3)
        // 99 bytes + "/" fits the name field; a 250-byte path splits into prefix and name.
        #expect(
            try headerCount { try $0.appendDirectory(path: String(name100.dropLast()), mode: 0o755, mtime: 0) } == 1)
        let split = String(repeating: "p", count: 149) + "/" + name100
        #expect(try headerCount { try $0.appendSymlink(path: split, target: "x", mtime: 0) } == 1)
        #expect(
            try headerCount {
                try $0.appendSymlink(path: String(repeating: "p", count: 156) + "/" + name100, target: "x", mtime: 0)
            } == 3)
    }

    @Test func contentMustMatchTheDeclaredSize() throws {
        let tar = TarWriter { _ in }
        try tar.beginFile(path: "f", mode: 0o644, mtime: 0, size: 4)
        try Array("abc".utf8).withUnsafeBytes { try tar.writeContent($0) }
        #expect(throws: SnapError.self) { try Array("de".utf8).withUnsafeBytes { try tar.writeContent($0) } }
        #expect(throws: SnapError.self) { try tar.endFile() }
        #expect(throws: SnapError.self) { try tar.appendDirectory(path: "d", mode: 0o755, mtime: 0) }
        try Array("d".utf8).withUnsafeBytes { try tar.writeContent($0) }
        try tar.endFile()
        #expect(throws: SnapError.self) { try tar.endFile() }
        try tar.finish()
        #expect(throws: SnapError.self) { try tar.appendDirectory(path: "late", mode: 0o755, mtime: 0) }
    }
}

@Suite struct GzipTests {
    @Test(arguments: [0, 1, 32 << 10, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 1_000_000])
    func roundTripsEverySize(count: Int) throws {
        let data = textBytes(count / 2, seed: 1) + pseudoRandomBytes(count - count / 2, seed: 2)
        let compressed = try gzip(data, blockSize: 64 << 10, piece: 7_777)
        #expect(try gunzip(compressed, chunk: 1000, readSize: 3000) == data)
        let system = try run(["gzip", "-dc"], input: compressed)
        #expect(system.status == 0)
        #expect(system.stderr == "")
        #expect(system.stdout == data)
    }

    @Test func outputDoesNotDependOnWorkerCount() throws {
        let data = textBytes(700_000, seed: 4) + pseudoRandomBytes(300_000, seed: 5) + textBytes(300_000, seed: 6)
        let one = try gzip(data, workers: 1)
        let four = try gzip(data, workers: 4, piece: 1)
        #expect(one == four)
        #expect(try gunzip(one) == data)
    }

    @Test func ratioIsCloseToGzip() throws {
        let data = textBytes(4_000_000, seed: 11)
        let ours = try gzip(data, blockSize: 128 << 10)
        let theirs = try run(["gzip", "-6", "-c"], input: data)
        #expect(Double(ours.count) <= Double(theirs.stdout.count) * 1.02)
        // Random data is stored: barely larger than the input.
        let random = pseudoRandomBytes(2_000_000, seed: 12)
        let stored = try gzip(random)
        #expect(stored.count < random.count + random.count / 500)
        #expect(try gunzip(stored) == random)
    }

    @Test func concatenatedMembersReadAsOneStream() throws {
        let first = textBytes(200_000, seed: 21)
        let second = pseudoRandomBytes(100_000, seed: 22)
        let systemMember = try run(["gzip", "-c"], input: second).stdout
        let emptyMember = try gzip([])
        let joined = try gzip(first) + emptyMember + systemMember + (try gzip(first))
        #expect(try gunzip(joined, chunk: 4096) == first + second + first)
        // Zero padding after the last member is fine; other trailing bytes are not.
        #expect(try gunzip(joined + [UInt8](repeating: 0, count: 3000)) == first + second + first)
        #expect(throws: SnapError.self) { try gunzip(joined + [0, 0, 7]) }
    }

    @Test func damagedStreamsAreErrors() throws {
        let data = textBytes(300_000, seed: 31)
        let good = try gzip(data)

        let truncated = Array(good.dropLast(5))
        let error1 = #expect(throws: SnapError.self) { try gunzip(truncated) }
        #expect(error1?.code == .corrupt)
        #expect(error1?.description.contains("truncated") == true)

        let halfway = Array(good.prefix(good.count / 2))
        #expect(throws: SnapError.self) { try gunzip(halfway) }

        var badCRC = good
        badCRC[badCRC.count - 6] ^= 0xFF
        let error2 = #expect(throws: SnapError.self) { try gunzip(badCRC) }
        #expect(error2?.description.contains("incorrect data check") == true)

        var flipped = good
        flipped[good.count / 3] ^= 0x55
        #expect(throws: SnapError.self) { try gunzip(flipped) }

        let error3 = #expect(throws: SnapError.self) { try gunzip(Array("plain text".utf8)) }
        #expect(error3?.description.contains("not gzip") == true)
        #expect(throws: SnapError.self) { try gunzip([]) }
    }

    @Test func sinkErrorsReachTheCaller() throws {
        struct Full: Error {}
        let writer = ParallelGzipWriter(level: 6, workers: 2, blockSize: 32 << 10) { _ in throw Full() }
        let data = textBytes(1_000_000, seed: 41)
        let error = #expect(throws: SnapError.self) {
            try data.withUnsafeBytes { try writer.write($0) }
            try writer.finish()
        }
        #expect(error?.cause is Full)
        #expect(throws: SnapError.self) { try writer.finish() }
    }
}

@Suite struct TarReaderTests {
    @Test func extremeTimesRoundTrip() throws {
        let times: [Int64] = [
            -1_500_000_000, -1, 0, 1, 8_589_934_591_000_000_000, 8_589_934_592_000_000_000, .max, .min + 1,
        ]
        let sink = ByteSink()
        let tar = TarWriter(sink: sink.append)
        for (index, time) in times.enumerated() {
            try tar.appendDirectory(path: "d\(index)", mode: 0o755, mtime: time)
        }
        try tar.finish()
        let reader = TarReader(source: memorySource(sink.bytes))
        for (index, time) in times.enumerated() {
            let entry = try #require(try reader.next())
            #expect(entry.path == "d\(index)")
            #expect(entry.kind == .directory)
            #expect(entry.mtime == time)
        }
        #expect(try reader.next() == nil)
    }

    func archive(_ build: (TarWriter) throws -> Void) throws -> [UInt8] {
        let sink = ByteSink()
        let tar = TarWriter(sink: sink.append)
        try build(tar)
        try tar.finish()
        return sink.bytes
    }

    @Test func badChecksumIsAnError() throws {
        var bytes = try archive { tar in
            try Array("x".utf8).withUnsafeBytes { try tar.appendFile(path: "a", mode: 0o644, mtime: 0, contents: $0) }
            try Array("y".utf8).withUnsafeBytes { try tar.appendFile(path: "b", mode: 0o644, mtime: 0, contents: $0) }
        }
        bytes[1024 + 10] = UInt8(ascii: "Z")  // inside the second header's name
        let reader = TarReader(source: memorySource(bytes))
        #expect(try reader.next()?.path == "a")
        let error = #expect(throws: SnapError.self) { try reader.next() }
        #expect(error?.code == .corrupt)
        #expect(error?.description.contains("checksum mismatch") == true)
        #expect(error?.description.contains("byte 1024") == true)

        var first = bytes
        first[0] ^= 1
        let error2 = #expect(throws: SnapError.self) { try TarReader(source: memorySource(first)).next() }
        #expect(error2?.description.contains("not a tar archive") == true)
    }

    @Test func truncationIsAnError() throws {
        let bytes = try archive { tar in
            try pseudoRandomBytes(5000, seed: 1).withUnsafeBytes {
                try tar.appendFile(path: "f", mode: 0o644, mtime: 0, contents: $0)
            }
        }
        // Mid-content, mid-header, and at a block boundary without the end marker.
        for cut in [3000, 512 + 5120 + 100, 512 + 5120] {
            let reader = TarReader(source: memorySource(Array(bytes.prefix(cut)), chunk: 700))
            let error = #expect(throws: SnapError.self) {
                while try reader.next() != nil {
                    var buffer = [UInt8](repeating: 0, count: 1000)
                    while try buffer.withUnsafeMutableBytes({ try reader.readContent(into: $0) }) > 0 {}
                }
            }
            #expect(error?.description.contains("truncated") == true, "cut at \(cut)")
        }
        // EOF right after one zero block is a normal end.
        let oneZero = Array(bytes.prefix(512 + 5120 + 512))
        let reader = TarReader(source: memorySource(oneZero))
        #expect(try reader.next()?.size == 5000)
        #expect(try reader.next() == nil)
    }

    @Test func gnuLongNamesAndBase256() throws {
        // A GNU header: magic "ustar  \0", an 'L' record with a long name, a base-256 size.
        func gnuHeader(name: String, type: UInt8, size: UInt64, base256: Bool = false) -> [UInt8] {
            var block = [UInt8](repeating: 0, count: 512)
            for (i, byte) in name.utf8.prefix(100).enumerated() { block[i] = byte }
            for (i, byte) in "0000644\0".utf8.enumerated() { block[100 + i] = byte }
            if base256 {
                block[124] = 0x80
                for i in 0..<8 { block[135 - i] = UInt8(truncatingIfNeeded: size >> (8 * UInt64(i))) }
            } else {
                let octal = String(size, radix: 8)
                for (i, byte) in (String(repeating: "0", count: 11 - octal.count) + octal).utf8.enumerated() {
                    block[124 + i] = byte
                }
            }
            for (i, byte) in "14000000000\0".utf8.enumerated() { block[136 + i] = byte }
            block[156] = type
            for (i, byte) in "ustar  \0".utf8.enumerated() { block[257 + i] = byte }
            // A signed checksum, as some old tars wrote it.
            var sum = 0
            for i in 0..<512 { sum += (148..<156).contains(i) ? 32 : Int(Int8(bitPattern: block[i])) }
            for (i, byte) in String(format: "%06o\0 ", sum).utf8.enumerated() { block[148 + i] = byte }
            return block
        }
        let long = String(repeating: "L", count: 150) + "/é"
        var bytes = gnuHeader(name: "././@LongLink", type: UInt8(ascii: "L"), size: UInt64(long.utf8.count + 1))
        var body = Array(long.utf8) + [0]
        body += [UInt8](repeating: 0, count: 512 - body.count)
        bytes += body
        bytes += gnuHeader(name: "truncated-name", type: UInt8(ascii: "0"), size: 3, base256: true)
        bytes += Array("abc".utf8) + [UInt8](repeating: 0, count: 509)
        bytes += gnuHeader(name: "dev", type: UInt8(ascii: "3"), size: 0)
        bytes += [UInt8](repeating: 0, count: 1024)

        let reader = TarReader(source: memorySource(bytes, chunk: 100))
        let entry = try #require(try reader.next())
        #expect(entry.path == long)
        #expect(entry.size == 3)
        #expect(entry.mtime == 0o14000000000 * 1_000_000_000)
        var buffer = [UInt8](repeating: 0, count: 10)
        let n = try buffer.withUnsafeMutableBytes { try reader.readContent(into: $0) }
        #expect(Array(buffer[0..<n]) == Array("abc".utf8))
        #expect(try reader.next()?.kind == .other("3"))
        #expect(try reader.next() == nil)
        #expect(try reader.next() == nil)
    }

    @Test func globalPaxHeadersAreSkippedAndBadPaxIsAnError() throws {
        func paxEntry(_ type: UInt8, _ records: [UInt8]) -> [UInt8] {
            var out = TarWriter.header(
                prefix: [], name: Array("pax".utf8), type: type, mode: 0o644, mtime: 0, size: UInt64(records.count),
                link: [])
            out += records + [UInt8](repeating: 0, count: (512 - records.count % 512) % 512)
            return out
        }
        let file = TarWriter.header(
            prefix: [], name: Array("short".utf8), type: UInt8(ascii: "0"), mode: 0o600, mtime: 7, size: 0, link: [])
        let end = [UInt8](repeating: 0, count: 1024)
        let good =
            paxEntry(UInt8(ascii: "g"), TarWriter.paxRecord("comment", Array("whatever".utf8)))
            + paxEntry(
                UInt8(ascii: "x"),
                TarWriter.paxRecord("path", Array("real/name.txt".utf8))
                    + TarWriter.paxRecord("mtime", Array("7.25".utf8)))
            + file + end
        let reader = TarReader(source: memorySource(good))
        let entry = try #require(try reader.next())
        #expect(entry.path == "real/name.txt")
        #expect(entry.mtime == 7_250_000_000)
        #expect(entry.mode == 0o600)
        #expect(try reader.next() == nil)

        let bad = paxEntry(UInt8(ascii: "x"), Array("99 path=x\n".utf8)) + file + end
        let error = #expect(throws: SnapError.self) { try TarReader(source: memorySource(bad)).next() }
        #expect(error?.description.contains("malformed pax") == true)
    }
}
