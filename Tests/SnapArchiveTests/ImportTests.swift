import Foundation
import SnapCore
import SnapTestSupport
import Testing

@testable import SnapArchive

/// A tar stream put together from raw headers, so that a test can write what no well-behaved
/// writer would: NUL bytes in pax records, names that are not UTF-8, crafted dump headers.
struct RawTar {
    var bytes: [UInt8] = []

    private static func padded(_ content: [UInt8]) -> [UInt8] {
        content + [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
    }

    /// An extended header (`x` by default) holding `records`.
    mutating func extended(_ records: [UInt8], type: Character = "x") {
        bytes += TarWriter.header(
            prefix: [], name: Array("PaxHeaders/entry".utf8), type: type.asciiValue!, mode: 0o644, mtime: 0,
            size: UInt64(records.count), link: [])
        bytes += Self.padded(records)
    }

    /// One entry; `name` and `link` go into the ustar fields as they are.
    mutating func entry(_ name: [UInt8], type: Character, link: [UInt8] = [], content: [UInt8] = []) {
        bytes += TarWriter.header(
            prefix: [], name: name, type: type.asciiValue!, mode: type == "5" ? 0o755 : 0o644,
            mtime: 1_767_225_600, size: UInt64(content.count), link: link)
        bytes += Self.padded(content)
    }

    mutating func folder(_ name: String) { entry(Array(name.utf8), type: "5") }
    mutating func file(_ name: String, _ content: String) {
        entry(Array(name.utf8), type: "0", content: Array(content.utf8))
    }
    mutating func symlink(_ name: String, to target: String) {
        entry(Array(name.utf8), type: "2", link: Array(target.utf8))
    }

    /// The archive: `storage/` with one file first, then what `build` adds, then the end marker.
    static func archive(_ build: (inout RawTar) -> Void) -> [UInt8] {
        var tar = RawTar()
        tar.folder("storage")
        tar.file("storage/ok.txt", "ok\n")
        build(&tar)
        return tar.bytes + [UInt8](repeating: 0, count: 1024)
    }
}

/// A fresh repository and an importer for it.
struct ImportFixture {
    let folder: TemporaryDirectory
    let repository: Repository

    init() throws {
        folder = try TemporaryDirectory()
        repository = try Repository.initialize(at: folder.file("repo"))
    }

    /// Gzips `tar` into a backup_*.tar.gz and imports it.
    func importArchive(_ tar: [UInt8]) throws -> Snapshot {
        let path = folder.file("backup_20260101_000000.tar.gz")
        try writeFile(path, try gzip(tar))
        return try BackupImporter(repository: repository, program: "snap test").importArchive(path)
    }

    /// The import fails with one line that holds each of `phrases`, and records nothing.
    @discardableResult
    func expectRefused(
        _ tar: [UInt8], saying phrases: [String], sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> SnapError? {
        let error = #expect(throws: SnapError.self, sourceLocation: sourceLocation) { try importArchive(tar) }
        let message = error?.description ?? ""
        #expect(!message.contains("\n"), "not one line: \(message)", sourceLocation: sourceLocation)
        for phrase in phrases + ["backup_20260101_000000.tar.gz", "nothing was recorded"] {
            #expect(message.contains(phrase), "'\(phrase)' missing from: \(message)", sourceLocation: sourceLocation)
        }
        #expect(try repository.snapshots().snapshots.isEmpty, sourceLocation: sourceLocation)
        let records = try FileManager.default.contentsOfDirectory(atPath: folder.file("repo/snapshots"))
        #expect(records.isEmpty, sourceLocation: sourceLocation)
        return error
    }

    /// The storage entries of `snapshot`, by the bytes of their paths.
    func storageEntries(_ snapshot: Snapshot) throws -> [[UInt8]: ManifestEntry] {
        var entries: [[UInt8]: ManifestEntry] = [:]
        try ManifestReader(repository: repository).forEachEntry(snapshot.record.manifest) { entry in
            if entry.kind != .database { entries[Array(entry.path.utf8)] = entry }
        }
        return entries
    }
}

@Suite struct ImportTests {
    // MARK: - NUL bytes in pax names

    @Test func nulInAPaxLinkpathIsRefused() throws {
        // "..\0x" passes a check that reads the whole string, and symlinkat makes a link to "..".
        let tar = RawTar.archive { tar in
            tar.extended(TarWriter.paxRecord("linkpath", Array("..\0x".utf8)))
            tar.symlink("storage/link", to: "ok.txt")
        }
        let error = try ImportFixture().expectRefused(tar, saying: ["'storage/link'", "NUL byte"])
        #expect(error?.code == .corrupt)

        // The reader itself refuses it, whoever reads.
        let reader = TarReader(source: memorySource(tar))
        _ = try reader.next()
        _ = try reader.next()
        let readerError = #expect(throws: SnapError.self) { try reader.next() }
        #expect(readerError?.description.contains("NUL byte") == true)
    }

    @Test func nulInAPaxPathIsRefusedByTheReader() throws {
        let tar = RawTar.archive { tar in
            tar.extended(TarWriter.paxRecord("path", Array("storage/evil\0/../../x".utf8)))
            tar.file("storage/placeholder", "x")
        }
        try ImportFixture().expectRefused(tar, saying: ["the pax path", "NUL byte"])
    }

    // MARK: - Names as bytes

    @Test func namesThatAreNotUTF8AreRefused() throws {
        // Latin-1 "café" and "cafè": decoded, both would be "caf\u{FFFD}", and one would replace
        // the other.
        let names = RawTar.archive { tar in
            tar.entry(Array("storage/caf".utf8) + [0xE9], type: "0", content: Array("first".utf8))
            tar.entry(Array("storage/caf".utf8) + [0xE8], type: "0", content: Array("second".utf8))
        }
        let error = try ImportFixture().expectRefused(
            names, saying: ["'storage/caf\\xE9'", "not valid UTF-8", "rename it to UTF-8"])
        #expect(error?.code == .invalidInput)

        let target = RawTar.archive { tar in
            tar.entry(Array("storage/link".utf8), type: "2", link: Array("caf".utf8) + [0xE9])
        }
        try ImportFixture().expectRefused(target, saying: ["'storage/link'", "'caf\\xE9'", "not valid UTF-8"])
    }

    @Test func namesThatUnicodeCallsEqualAreTwoFiles() throws {
        // NFC "é" and NFD "e" + U+0301: equal as Swift strings, two names on disk.
        let nfc = "storage/\u{E9}.txt"
        let nfd = "storage/e\u{301}.txt"
        let fixture = try ImportFixture()
        let snapshot = try fixture.importArchive(
            RawTar.archive { tar in
                tar.file(nfc, "composed")
                tar.file(nfd, "decomposed!")
            })
        let entries = try fixture.storageEntries(snapshot)
        #expect(entries[Array("\u{E9}.txt".utf8)]?.size == 8)
        #expect(entries[Array("e\u{301}.txt".utf8)]?.size == 11)
        #expect(snapshot.record.totals.files == 3)
    }

    @Test func aSlashBeforeACombiningMarkStillSeparatesComponents() throws {
        // "/" + U+0301 is one Character: split at Characters, "../\u{301}x" is a single harmless
        // component; the kernel sees "..", then "\u{301}x".
        for target in ["../\u{301}x", "/\u{301}etc/passwd", "sub/../../\u{301}x"] {
            // A link's target is data, kept byte for byte, as a snapshot keeps it...
            let fixture = try ImportFixture()
            let snapshot = try fixture.importArchive(RawTar.archive { tar in tar.symlink("storage/link", to: target) })
            let stored = try fixture.storageEntries(snapshot)[Array("link".utf8)]?.target
            #expect(stored.map { Array($0.utf8) } == Array(target.utf8))
            // ... but GNU tar makes a link that is absolute or climbs with '..' only at the end of
            // the extraction, so an entry listed after it at the same path leaves either one.
            let twice = RawTar.archive { tar in
                tar.symlink("storage/link", to: target)
                tar.file("storage/link", "later")
            }
            try ImportFixture().expectRefused(twice, saying: ["'storage/link'", "comes after a symlink"])
        }
        let dotdot = RawTar.archive { tar in tar.file("storage/../\u{301}x", "evil") }
        try ImportFixture().expectRefused(dotdot, saying: ["has '..' in its path"])
        let absolute = RawTar.archive { tar in tar.file("/\u{301}etc/evil", "evil") }
        try ImportFixture().expectRefused(absolute, saying: ["has an absolute path"])
    }

    // MARK: - Extended headers

    @Test func onlyThePaxRecordsTheReaderUsesAreKept() throws {
        let body =
            TarWriter.paxRecord("comment", [UInt8](repeating: 0x61, count: 100_000))
            + TarWriter.paxRecord("SCHILY.xattr.user.big", [UInt8](repeating: 0x62, count: 100_000))
            + TarWriter.paxRecord("path", Array("storage/kept".utf8))
            + TarWriter.paxRecord("mtime", Array("1.5".utf8))
        let records = try PaxRecords.parse(body, at: 0)
        #expect(records.path == Array("storage/kept".utf8))
        #expect(records.mtime == Array("1.5".utf8))
        #expect(records.linkpath == nil && records.size == nil && records.sparse.isEmpty && records.volumeKey == nil)
        #expect(records.firstKey == "path")
    }

    // MARK: - pg_dump headers

    /// A custom-format header: `PGDMP`, version, int size 4 (or `intSize`), offset size 8,
    /// format 1, then `rest`.
    static func dumpHeader(minor: UInt8 = 16, intSize: UInt8 = 4, _ rest: [UInt8]) -> [UInt8] {
        Array("PGDMP".utf8) + [1, minor, 0, intSize, 8, 1] + rest
    }

    /// A pg_dump int: sign byte, then `size` little-endian bytes of the magnitude.
    static func dumpInt(_ value: Int, size: Int = 4) -> [UInt8] {
        [value < 0 ? 1 : 0] + (0..<size).map { UInt8(truncatingIfNeeded: value.magnitude >> (8 * UInt($0))) }
    }

    static func dumpString(_ text: String) -> [UInt8] { dumpInt(text.utf8.count) + Array(text.utf8) }

    /// compression byte, 7 time ints, then the three strings.
    static func goodHeader(minor: UInt8 = 16) -> [UInt8] {
        dumpHeader(
            minor: minor,
            (minor >= 15 ? [0] : dumpInt(0)) + (0..<7).flatMap { _ in dumpInt(1) } + dumpString("shop")
                + dumpString("17.2 (Debian 17.2-1)") + dumpString("17.2"))
    }

    @Test func aGoodDumpHeaderGivesItsFacts() throws {
        for minor: UInt8 in [14, 16] {
            let header = try #require(try DumpHeader.parse(Self.goodHeader(minor: minor) + [9, 9, 9]))
            #expect(header.facts.name == "shop")
            #expect(header.facts.serverVersionNumber == 170002)
            #expect(header.facts.pgDumpVersion == "17.2")
            #expect(!header.compressed)
        }
        #expect(try DumpHeader.parse(Array("-- PostgreSQL database dump\n".utf8)) == nil)
    }

    @Test func crashingDumpHeadersAreErrors() throws {
        // Int.min as sign byte 1 with magnitude 2^63 (negating it trapped).
        let intMin = Self.dumpHeader(intSize: 8, [0] + [1] + [0, 0, 0, 0, 0, 0, 0, 0x80])
        // A database name of Int.max bytes (position + length overflowed).
        let longName = Self.dumpHeader(
            intSize: 8,
            [0] + (0..<7).flatMap { _ in Self.dumpInt(0, size: 8) } + [0] + [
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
            ])
        // A name longer than what follows.
        let shortName = Self.dumpHeader([0] + (0..<7).flatMap { _ in Self.dumpInt(0) } + Self.dumpInt(50) + [1, 2])
        for (bytes, why) in [(intMin, "integer too large"), (longName, "past the end"), (shortName, "past the end")] {
            let error = #expect(throws: DumpHeader.Damage.self) { try DumpHeader.parse(bytes) }
            #expect(error?.why.contains(why) == true, "\(error?.why ?? "no error")")
        }
        // Truncated inside the fixed part.
        #expect(throws: DumpHeader.Damage.self) { try DumpHeader.parse(Array("PGDMP".utf8) + [1, 16]) }
        // A version snap does not know keeps the old leniency: unknown facts, no error.
        var future = intMin
        future[6] = 99
        #expect(try DumpHeader.parse(future) == nil)
    }

    @Test func versionNumbersNeverOverflow() {
        #expect(DumpHeader.versionNumber("15.18 (Debian 15.18-1.pgdg120+1)") == 150018)
        #expect(DumpHeader.versionNumber("9.6.24") == 90624)
        #expect(DumpHeader.versionNumber("17devel") == 170000)
        #expect(DumpHeader.versionNumber("999999999999999999.1") == 0)  // major * 10000 trapped
        #expect(DumpHeader.versionNumber("9.99999999999999999.1") == 0)
        #expect(DumpHeader.versionNumber("99999999999999999999") == 0)
        #expect(DumpHeader.versionNumber("EnterpriseDB 15") == 0)
    }

    @Test func aDamagedDumpHeaderStopsTheImport() throws {
        let dump =
            Self.dumpHeader(intSize: 8, [0] + [1] + [0, 0, 0, 0, 0, 0, 0, 0x80]) + [UInt8](repeating: 7, count: 5000)
        let tar = RawTar.archive { tar in tar.entry(Array("database.dump".utf8), type: "0", content: dump) }
        let error = try ImportFixture().expectRefused(
            tar, saying: ["'database.dump'", "pg_dump custom-format", "integer too large", "pg_dump -Fc"])
        #expect(error?.code == .corrupt)

        // A good header goes through, with its facts.
        let good = RawTar.archive { tar in
            tar.entry(Array("database.dump".utf8), type: "0", content: Self.goodHeader() + [1, 2, 3])
        }
        let fixture = try ImportFixture()
        let snapshot = try fixture.importArchive(good)
        #expect(snapshot.record.sources.database?.name == "shop")
        #expect(snapshot.record.sources.database?.serverVersionNumber == 170002)
    }
}
