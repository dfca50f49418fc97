import Foundation
import SnapCore
import SnapTestSupport
import Testing

@testable import SnapArchive

/// The storage tree an import builds: manifest order, implied folders, entries listed twice, and
/// the numeric and time fields the reader accepts.
@Suite struct ImportTreeTests {
    /// Every storage path of `snapshot`, in manifest order.
    private func manifestPaths(_ fixture: ImportFixture, _ snapshot: Snapshot) throws -> [ManifestEntry] {
        var entries: [ManifestEntry] = []
        try ManifestReader(repository: fixture.repository).forEachEntry(snapshot.record.manifest) { entry in
            if entry.kind != .database { entries.append(entry) }
        }
        return entries
    }

    @Test func entriesComeOutInManifestOrderWithImpliedFolders() throws {
        let deep = (0..<300).map { "d\($0)" }.joined(separator: "/")
        let fixture = try ImportFixture()
        let snapshot = try fixture.importArchive(
            RawTar.archive { tar in
                tar.file("storage/b/z", "z")
                tar.extended(TarWriter.paxRecord("path", Array(("storage/a/" + deep + "/f").utf8)))
                tar.file("storage/placeholder", "deep")
                tar.folder("storage/a")
                tar.file("storage/a-b", "dash sorts before slash")
                tar.file("storage/a/\u{E9}", "nfc")
                tar.file("storage/a/e\u{301}", "nfd")
                tar.symlink("storage/b/link", to: "/anywhere/at/all")
            })
        let entries = try manifestPaths(fixture, snapshot)
        // Depth first, names compared as bytes: "a" < "a-b" < "b", "e\u{301}" < "\u{E9}" (0x65 < 0xC3).
        var expected = [".", "a"]
        var path = "a"
        for level in 0..<300 {
            path += "/d\(level)"
            expected.append(path)
        }
        // The chain sorts inside "a" before "e\u{301}" ("d" < "e").
        expected += [path + "/f", "a/e\u{301}", "a/\u{E9}", "a-b", "b", "b/link", "b/z", "ok.txt"]
        #expect(entries.map { Array($0.path.utf8) } == expected.map { Array($0.utf8) })
        // Folders the archive left implicit: 0755, dated from the newest entry.
        let implied = try #require(entries.first { $0.path == "a/d0" })
        #expect(implied.kind == .directory && implied.mode == 0o755 && implied.mtime == 1_767_225_600_000_000_000)
        #expect(entries.first { $0.path == "b/link" }?.target == "/anywhere/at/all")
        #expect(snapshot.record.totals.directories == 302)
    }

    @Test func anEntryListedAgainReplacesTheEarlierOneAsTarDoes() throws {
        let fixture = try ImportFixture()
        let snapshot = try fixture.importArchive(
            RawTar.archive { tar in
                tar.file("storage/a", "one")
                tar.entry(Array("storage/copy".utf8), type: "1", link: Array("storage/a".utf8))
                tar.file("storage/a", "two!")
                tar.file("storage/f", "a file, then a folder")
                tar.folder("storage/f")
                tar.file("storage/f/inside", "x")
                tar.symlink("storage/l", to: "relative")
                tar.file("storage/l", "a file after a relative link")
            })
        let entries = try manifestPaths(fixture, snapshot)
        let byPath = Dictionary(uniqueKeysWithValues: entries.map { ($0.path, $0) })
        #expect(byPath["a"]?.size == 4)
        #expect(byPath["copy"]?.size == 3, "the hard link keeps the file as it was when linked")
        #expect(byPath["f"]?.kind == .directory && byPath["f/inside"]?.kind == .file)
        #expect(byPath["l"]?.kind == .file)
        #expect(entries.count == 7)  // ., a, copy, f, f/inside, l, ok.txt
    }

    @Test func aFolderReplacedByAFileWithEntriesBelowIsRefused() throws {
        let tar = RawTar.archive { tar in
            tar.folder("storage/d")
            tar.file("storage/d/x", "x")
            tar.file("storage/d", "now a file")
        }
        try ImportFixture().expectRefused(tar, saying: ["'storage/d/x'", "lies below 'd', which is a file"])
    }

    @Test func numericFieldsAreReadAsBothGNUTarAndTarfileReadThem() {
        func value(_ bytes: [UInt8]) -> Int64? { TarReader.numberValue(bytes[...]) }
        #expect(value(Array("0000644\0".utf8)) == 0o644)
        #expect(value(Array("  644 \0\0".utf8)) == 0o644)
        #expect(value([UInt8](repeating: 0, count: 8)) == 0)
        #expect(value([0x80, 0, 0, 0, 0, 0, 0, 1, 0]) == 256)
        #expect(value([0xFF] + [UInt8](repeating: 0xFF, count: 10) + [0xFE]) == -2)
        #expect(value(Array("        ".utf8)) == nil, "blanks: GNU tar refuses, tarfile reads 0")
        #expect(value([0] + Array("000644".utf8)) == nil, "a NUL first: GNU tar skips it, tarfile reads 0")
        #expect(value([0x81, 0, 0, 1]) == nil, "base-256 leads with 0x80 or 0xFF only")
        #expect(value(Array("12 34\0".utf8)) == nil)
        #expect(value([0x80] + [UInt8](repeating: 0xFF, count: 11)) == nil, "past 64 bits")
    }

    @Test func negativePaxTimesRoundTowardsMinusInfinityAsGNUTarRoundsThem() {
        #expect(TarReader.paxTime(Array("-1.25".utf8)) == -1_250_000_000)
        #expect(TarReader.paxTime(Array("-1.0000000001".utf8)) == -1_000_000_001)
        #expect(TarReader.paxTime(Array("-1.0000000000".utf8)) == -1_000_000_000)
        #expect(TarReader.paxTime(Array("1.0000000009".utf8)) == 1_000_000_000)
    }

    @Test func aSparseMapExpandsToHolesAndData() throws {
        // Old GNU sparse: 514 bytes at 512, then a hole to the end at 2048 (an empty last region).
        var header = TarWriter.header(
            prefix: [], name: Array("storage/s".utf8), type: UInt8(ascii: "S"), mode: 0o644, mtime: 1, size: 514,
            link: [])
        let fields = [
            (257, "ustar  \0"), (386, "00000001000\0"), (398, "00000001002\0"), (410, "00000004000\0"),
            (422, "00000000000\0"), (483, "00000004000\0"),
        ]
        for (offset, text) in fields {
            header.replaceSubrange(offset..<(offset + text.utf8.count), with: Array(text.utf8))
        }
        header.replaceSubrange(345..<386, with: [UInt8](repeating: 0, count: 41))
        header.replaceSubrange(148..<156, with: Array("        ".utf8))
        let sum = header.reduce(0) { $0 + Int($1) }
        header.replaceSubrange(148..<156, with: Array(String(format: "%06o\0 ", sum).utf8))
        let data = [UInt8](repeating: UInt8(ascii: "a"), count: 512) + Array("bc".utf8)
        let tar = header + data + [UInt8](repeating: 0, count: 1024 - data.count % 512 + 1024)
        let reader = TarReader(source: memorySource(tar, chunk: 100))
        let entry = try #require(try reader.next())
        #expect(entry.kind == .file && entry.isSparse && entry.size == 2048)
        var content: [UInt8] = []
        var buffer = [UInt8](repeating: 0xEE, count: 300)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try reader.readContent(into: $0) }
            if n == 0 { break }
            content += buffer[0..<n]
        }
        #expect(content.count == 2048)
        #expect(content[0..<512].allSatisfy { $0 == 0 })
        #expect(content[512..<1024].allSatisfy { $0 == UInt8(ascii: "a") })
        #expect(Array(content[1024..<1026]) == Array("bc".utf8))
        #expect(content[1026...].allSatisfy { $0 == 0 })
        #expect(try reader.next() == nil)
    }
}
