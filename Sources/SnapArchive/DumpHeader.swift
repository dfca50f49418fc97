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

    /// For a dump that is not in custom format (a plain SQL dump, say), or of a newer version.
    static let unknownFacts = DatabaseFacts(
        name: "unknown", host: nil, port: nil, user: nil, serverVersion: "unknown", serverVersionNumber: 0,
        encoding: "unknown", sizeBytes: 0, inRecovery: false, walPosition: "unknown", systemIdentifier: "unknown",
        pgDumpVersion: "unknown")

    /// The newest archive version snap knows the header layout of (1.16: PostgreSQL 17).
    static let newestKnownVersion = (1, 16)

    /// Why a header that claims to be pg_dump's custom format cannot be read.
    struct Damage: Error {
        var why: String
    }

    /// The header of a custom-format dump; nil for anything else (a plain SQL dump, another
    /// format, a newer version whose layout snap does not know and cannot read). Throws `Damage`
    /// for a custom-format header of a known version that is truncated or holds impossible values.
    static func parse(_ bytes: [UInt8]) throws -> DumpHeader? {
        guard bytes.starts(with: Array("PGDMP".utf8)) else { return nil }
        guard bytes.count > 11 else {
            throw Damage(why: "it ends inside its pg_dump header (\(bytes.count) bytes)")
        }
        let version = (Int(bytes[5]), Int(bytes[6]))
        guard bytes[10] == 1 else { return nil }  // format 1: custom
        do {
            return try parseCustom(bytes, version: version)
        } catch {
            if version > newestKnownVersion { return nil }
            throw error
        }
    }

    private static func parseCustom(_ bytes: [UInt8], version: (Int, Int)) throws -> DumpHeader {
        let intSize = Int(bytes[8])
        guard (1...8).contains(intSize) else {
            throw Damage(why: "its pg_dump header gives an integer size of \(intSize) bytes")
        }
        var position = 11
        let truncated = Damage(why: "it ends inside its pg_dump header")

        // A sign byte, then the magnitude in little-endian bytes; it must fit in an Int.
        func readInt() throws -> Int {
            guard intSize < bytes.count - position else { throw truncated }
            let negative = bytes[position] != 0
            var magnitude: UInt64 = 0
            for index in 0..<intSize { magnitude |= UInt64(bytes[position + 1 + index]) << (8 * index) }
            position += 1 + intSize
            guard magnitude <= UInt64(Int.max) else {
                throw Damage(why: "its pg_dump header holds an integer too large for any dump (\(magnitude))")
            }
            return negative ? -Int(magnitude) : Int(magnitude)
        }
        func readString(_ what: String) throws -> String {
            let length = try readInt()
            if length < 0 { return "" }
            guard length <= bytes.count - position else {
                throw Damage(
                    why: "its pg_dump header gives the \(what) a length of \(length) bytes, past the end of the header")
            }
            defer { position += length }
            return String(decoding: bytes[position..<position + length], as: UTF8.self)
        }

        let compressed: Bool
        if version >= (1, 15) {
            guard position < bytes.count else { throw truncated }
            compressed = bytes[position] != 0
            position += 1
        } else {
            compressed = try readInt() != 0
        }
        for _ in 0..<7 { _ = try readInt() }  // the creation time
        let name = try readString("database name")
        let server = try readString("server version")
        let pgDump = try readString("pg_dump version")
        return DumpHeader(
            compressed: compressed,
            facts: DatabaseFacts(
                name: name, host: nil, port: nil, user: nil, serverVersion: server,
                serverVersionNumber: versionNumber(server), encoding: "unknown", sizeBytes: 0, inRecovery: false,
                walPosition: "unknown", systemIdentifier: "unknown", pgDumpVersion: pgDump))
    }

    /// "15.18 (Debian ...)" → 150018; "9.6.24" → 90624; 0 for text that is not such a version
    /// (numbers too large for one included).
    static func versionNumber(_ text: String) -> Int {
        let numbers = text.prefix { $0.isNumber || $0 == "." }.split(separator: ".").map { Int($0) }
        guard let first = numbers.first, let major = first, (1...9999).contains(major) else { return 0 }
        func part(_ index: Int, below limit: Int) -> Int? {
            guard index < numbers.count else { return 0 }
            guard let value = numbers[index], value < limit else { return nil }
            return value
        }
        if major >= 10 {
            guard let minor = part(1, below: 10000) else { return 0 }
            return major * 10000 + minor
        }
        guard let minor = part(1, below: 100), let patch = part(2, below: 100) else { return 0 }
        return major * 10000 + minor * 100 + patch
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

    func result() throws -> DumpHeader? { try DumpHeader.parse(bytes) }
}
