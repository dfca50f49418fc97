import SnapCore

/// What the header of a pg_dump custom-format archive says: whether its data is compressed, and
/// the database name and versions, which become the imported snapshot's database facts.
///
/// Layout (pg_backup_archiver.c, `WriteHead`): `PGDMP`, version major/minor/revision, int size,
/// offset size, format; then the compression (an int before format 1.15, an algorithm byte
/// since); then the creation time (7 ints), the database name, the server's and pg_dump's
/// version strings. An int is a sign byte followed by `intSize` little-endian bytes; a string is
/// an int length followed by the bytes.
struct DumpHeader {
    var compressed: Bool
    var facts: DatabaseFacts

    /// For a dump whose header cannot be read (a plain SQL dump, say).
    static let unknownFacts = DatabaseFacts(
        name: "unknown", host: nil, port: nil, user: nil, serverVersion: "unknown", serverVersionNumber: 0,
        encoding: "unknown", sizeBytes: 0, inRecovery: false, walPosition: "unknown", systemIdentifier: "unknown",
        pgDumpVersion: "unknown")

    static func parse(_ bytes: [UInt8]) -> DumpHeader? {
        guard bytes.count > 11, bytes.starts(with: Array("PGDMP".utf8)) else { return nil }
        let version = (Int(bytes[5]), Int(bytes[6]))
        let intSize = Int(bytes[8])
        guard (1...8).contains(intSize), bytes[10] == 1 else { return nil }  // format 1: custom
        var position = 11

        func readInt() -> Int? {
            guard position + 1 + intSize <= bytes.count else { return nil }
            let negative = bytes[position] != 0
            var value = 0
            for index in 0..<intSize { value |= Int(bytes[position + 1 + index]) << (8 * index) }
            position += 1 + intSize
            return negative ? -value : value
        }
        func readString() -> String? {
            guard let length = readInt() else { return nil }
            if length < 0 { return "" }
            guard position + length <= bytes.count else { return nil }
            defer { position += length }
            return String(decoding: bytes[position..<position + length], as: UTF8.self)
        }

        let compressed: Bool
        if version >= (1, 15) {
            guard position < bytes.count else { return nil }
            compressed = bytes[position] != 0
            position += 1
        } else {
            guard let level = readInt() else { return nil }
            compressed = level != 0
        }
        for _ in 0..<7 { guard readInt() != nil else { return nil } }
        guard let name = readString(), let server = readString(), let pgDump = readString() else { return nil }
        return DumpHeader(
            compressed: compressed,
            facts: DatabaseFacts(
                name: name, host: nil, port: nil, user: nil, serverVersion: server,
                serverVersionNumber: versionNumber(server), encoding: "unknown", sizeBytes: 0, inRecovery: false,
                walPosition: "unknown", systemIdentifier: "unknown", pgDumpVersion: pgDump))
    }

    /// "15.18 (Debian ...)" → 150018; "9.6.24" → 90624.
    static func versionNumber(_ text: String) -> Int {
        let numbers = text.prefix { $0.isNumber || $0 == "." }.split(separator: ".").compactMap { Int($0) }
        guard let major = numbers.first else { return 0 }
        if major >= 10 { return major * 10000 + (numbers.count > 1 ? numbers[1] : 0) }
        return major * 10000 + (numbers.count > 1 ? numbers[1] * 100 : 0) + (numbers.count > 2 ? numbers[2] : 0)
    }
}

/// Collects the first few KiB of a dump as it streams past, then parses its header.
struct DumpHeaderReader {
    private var bytes: [UInt8] = []
    private static let limit = 4096

    mutating func feed(_ chunk: UnsafeRawBufferPointer) {
        guard bytes.count < Self.limit else { return }
        bytes.append(contentsOf: chunk.prefix(Self.limit - bytes.count))
    }

    var result: DumpHeader? { DumpHeader.parse(bytes) }
}
