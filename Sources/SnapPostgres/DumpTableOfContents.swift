import Foundation

/// The header and table of contents of a custom-format dump (`pg_dump -Fc`), read from its first
/// bytes: what a restore must know before it changes anything.
///
/// pg_dump writes the table of contents before any data, also into a pipe, so the start of the
/// stream is enough: the roles that own the objects (a restore that cannot give objects to them
/// fails half-way), the database-level settings, comments and grants that pg_restore applies only
/// with `--create` (snap carries them itself), the grantees of every GRANT, and each entry's data
/// offset field (`DumpDataIndex` sets them in a spooled copy).
///
/// Layout (pg_backup_archiver.c `WriteHead`/`WriteToc`, pg_backup_custom.c): `PGDMP`, the format
/// version (major, minor, revision bytes), int size, offset size, format byte (1: custom); the
/// compression (a byte from 1.15 on, an int before); the creation time (7 ints); the database
/// name, the server version and the pg_dump version (strings); an int count of entries, each with
/// its id, whether it has data, table OID and OID (strings), tag, description, section (int),
/// definition, drop statement, COPY statement, schema, tablespace, table access method (1.14 on),
/// relkind (int, 1.16 on), owner, "false" (no OIDs), dependencies (strings up to a null one), and
/// the data offset: a state byte (1 not set, 2 set, 3 no data) and `offsetSize` little-endian
/// bytes. An int is a sign byte and `intSize` little-endian bytes; a string an int length (-1:
/// null) and the bytes.
public struct DumpTableOfContents: Sendable {
    /// One table of contents entry.
    public struct Entry: Sendable {
        public var dumpID: Int
        /// "TABLE", "TABLE DATA", "ACL", "COMMENT", "DATABASE PROPERTIES", ...
        public var desc: String
        /// The object's name as pg_dump labels it: "orders", "DATABASE app", "TABLE orders".
        public var tag: String
        public var namespace: String
        public var owner: String
        /// The SQL that creates the object (empty for data entries).
        public var definition: String
        /// Where the entry's data offset field is, from the start of the dump (its state byte).
        public var offsetPosition: Int
        /// 1: offset not set (a dump written to a pipe), 2: set, 3: no data.
        public var offsetState: UInt8
        public var storedOffset: Int
    }

    /// The name of the database that was dumped, from the header.
    public var databaseName: String
    /// The dump format's minor version: 14 for PostgreSQL 12 to 15, 16 for 17.
    public var formatMinor: Int
    public var intSize: Int
    public var offsetSize: Int
    public var entries: [Entry]
    /// Where the table of contents ends and the data blocks begin.
    public var end: Int

    /// What reading the first bytes of a dump gave.
    public enum Reading: Sendable {
        /// The table of contents goes on beyond the bytes given.
        case needMore
        /// Not a custom-format archive at all (`kind` says what it looks like: a plain SQL
        /// script, a gzip file, a tar archive, ...).
        case notCustomFormat(kind: String)
        /// A custom-format archive of a version this reader does not know, or malformed.
        case unreadable(reason: String)
        case read(DumpTableOfContents)
    }

    /// The 5 bytes every custom-format archive starts with.
    static let magic = Array("PGDMP".utf8)

    /// Reads the header and table of contents from the first bytes of a dump. With `keepText`
    /// false only ids and offset fields are kept (the data index needs no more, and the text of
    /// 200,000 entries is worth not copying).
    public static func read(_ bytes: [UInt8], keepText: Bool = true) -> Reading {
        guard bytes.count >= magic.count else {
            return bytes.elementsEqual(magic.prefix(bytes.count)) ? .needMore : .notCustomFormat(kind: kind(of: bytes))
        }
        guard bytes.starts(with: magic) else { return .notCustomFormat(kind: kind(of: bytes)) }
        var cursor = Cursor(bytes: bytes)
        do {
            _ = try cursor.bytes(5)
            let major = Int(try cursor.byte())
            let minor = Int(try cursor.byte())
            _ = try cursor.byte()
            cursor.intSize = Int(try cursor.byte())
            let offsetSize = Int(try cursor.byte())
            let format = try cursor.byte()
            // Custom format 1.11 (the first with a section per entry) up to 1.16 (PostgreSQL 17).
            guard format == 1 else { throw Unreadable("archive format \(format) is not the custom format") }
            guard major == 1, (11...16).contains(minor) else {
                throw Unreadable("custom format version \(major).\(minor) is not one snap knows (1.11 to 1.16)")
            }
            guard (1...8).contains(cursor.intSize), (1...8).contains(offsetSize) else {
                throw Unreadable("impossible int or offset size")
            }
            if minor >= 15 { _ = try cursor.byte() } else { _ = try cursor.int() }  // compression
            for _ in 0..<7 { _ = try cursor.int() }  // creation time
            let databaseName = try cursor.string() ?? ""
            for _ in 0..<2 { _ = try cursor.skipString() }  // server and pg_dump versions
            let count = try cursor.int()
            guard count >= 0 else { throw Unreadable("a negative count of entries") }
            var entries: [Entry] = []
            for _ in 0..<count {
                let id = try cursor.int()
                _ = try cursor.int()  // has data
                for _ in 0..<2 { _ = try cursor.skipString() }  // table OID, OID
                let tag = try cursor.text(keepText)
                let desc = try cursor.text(keepText)
                _ = try cursor.int()  // section
                let definition = try cursor.text(keepText)
                for _ in 0..<2 { _ = try cursor.skipString() }  // drop and COPY statements
                let namespace = try cursor.text(keepText)
                _ = try cursor.skipString()  // tablespace
                if minor >= 14 { _ = try cursor.skipString() }  // table access method
                if minor >= 16 { _ = try cursor.int() }  // relkind
                let owner = try cursor.text(keepText)
                _ = try cursor.skipString()  // "false": no OIDs
                while try cursor.skipString() {}  // dependencies, up to a null string
                let position = cursor.index
                let state = try cursor.byte()
                var offset = 0
                for byte in try cursor.bytes(offsetSize).enumerated() {
                    offset |= Int(byte.element) << (8 * byte.offset)
                }
                entries.append(
                    Entry(
                        dumpID: id, desc: desc, tag: tag, namespace: namespace, owner: owner, definition: definition,
                        offsetPosition: position, offsetState: state, storedOffset: offset))
            }
            return .read(
                DumpTableOfContents(
                    databaseName: databaseName, formatMinor: minor, intSize: cursor.intSize, offsetSize: offsetSize,
                    entries: entries, end: cursor.index))
        } catch is NeedMore {
            return .needMore
        } catch let error as Unreadable {
            return .unreadable(reason: error.reason)
        } catch {
            return .unreadable(reason: "\(error)")
        }
    }

    /// Reads the table of contents from the start of a dump stream (`read` fills the buffer and
    /// returns the count, 0 at the end), reading no further than it needs.
    public static func read(from read: (UnsafeMutableRawBufferPointer) throws -> Int) throws -> Reading {
        var collector = TableOfContentsCollector(keepText: true)
        var buffer = [UInt8](repeating: 0, count: 256 << 10)
        while !collector.isDecided {
            let count = try buffer.withUnsafeMutableBytes { try read($0) }
            if count == 0 {
                collector.finish()
                break
            }
            buffer.withUnsafeBytes { collector.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
        return collector.reading
    }

    /// What a file that is not a custom-format archive looks like, for messages.
    static func kind(of bytes: [UInt8]) -> String {
        if bytes.starts(with: [0x1F, 0x8B]) { return "a gzip file (a compressed plain SQL script?)" }
        if bytes.count >= 262, Array(bytes[257..<262]) == Array("ustar".utf8) {
            return "a tar archive (pg_dump --format=tar)"
        }
        let text = String(decoding: bytes.prefix(64), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if text.hasPrefix("--") || text.uppercased().hasPrefix("SET ") || text.uppercased().hasPrefix("CREATE ")
            || text.hasPrefix("\\")
        {
            return "a plain SQL script (pg_dump --format=plain)"
        }
        return "not a pg_dump archive"
    }

    // MARK: What a restore needs to know

    /// The entries pg_restore applies only with `--create`: the database's own settings
    /// (DATABASE PROPERTIES: ALTER DATABASE ... SET, ALTER ROLE ... IN DATABASE ... SET, the
    /// connection limit), its comment, security labels and grants. A restore into an existing
    /// database (and `--clean`, which creates the database itself) would lose them.
    public var databaseLevelEntries: [Entry] {
        entries.filter { entry in
            entry.desc == "DATABASE PROPERTIES"
                || (["COMMENT", "SECURITY LABEL", "ACL"].contains(entry.desc) && entry.tag.hasPrefix("DATABASE "))
        }
    }

    /// Every role that owns an entry (pg_restore gives each object to it with ALTER ... OWNER).
    public var owners: Set<String> {
        Set(entries.map(\.owner).filter { !$0.isEmpty })
    }

    /// Every role the grants, default privileges and per-role settings of the dump name (PUBLIC
    /// and the like left out): pg_restore fails on the first one the target server lacks.
    public var grantees: Set<String> {
        var roles = Set<String>()
        for entry in entries where entry.desc == "ACL" || entry.desc == "DEFAULT ACL" {
            roles.formUnion(SQLText.rolesNamed(inGrants: entry.definition))
        }
        for entry in entries where entry.desc == "DATABASE PROPERTIES" {
            roles.formUnion(SQLText.rolesNamed(inGrants: entry.definition))
        }
        return roles
    }

    // MARK: Reading

    private struct NeedMore: Error {}
    private struct Unreadable: Error {
        var reason: String
        init(_ reason: String) { self.reason = reason }
    }

    private struct Cursor {
        let bytes: [UInt8]
        var index = 0
        var intSize = 4

        mutating func byte() throws -> UInt8 {
            guard index < bytes.count else { throw NeedMore() }
            defer { index += 1 }
            return bytes[index]
        }

        mutating func bytes(_ count: Int) throws -> ArraySlice<UInt8> {
            // Lengths come from the archive: compared so that no sum can overflow.
            guard count <= bytes.count - index else { throw NeedMore() }
            defer { index += count }
            return bytes[index..<index + count]
        }

        mutating func int() throws -> Int {
            let raw = try bytes(1 + intSize)
            var value = 0
            for (offset, byte) in raw.dropFirst().enumerated() { value |= Int(byte) << (8 * offset) }
            return raw.first! != 0 ? 0 &- value : value
        }

        /// Skips a string; false when it was the null string.
        mutating func skipString() throws -> Bool {
            let length = try int()
            guard length >= 0 else { return false }
            _ = try bytes(length)
            return true
        }

        mutating func string() throws -> String? {
            let length = try int()
            guard length >= 0 else { return nil }
            return String(decoding: try bytes(length), as: UTF8.self)
        }

        /// A string kept (nil as empty) or skipped.
        mutating func text(_ keep: Bool) throws -> String {
            guard keep else {
                _ = try skipString()
                return ""
            }
            return try string() ?? ""
        }
    }
}

/// Gathers the first bytes of a dump as they stream past until its table of contents can be
/// read: for a restore, which applies the database-level entries after loading, and for
/// `DumpDataIndex`, which goes on from where the table ends.
struct TableOfContentsCollector {
    /// The bytes gathered so far; kept once the table is read, for the data that follows it.
    private(set) var bytes: [UInt8] = []
    private(set) var reading: DumpTableOfContents.Reading = .needMore
    private let keepText: Bool
    private var nextAttempt = 4096
    /// The table of contents is read whole; beyond this, give up. (32 MiB holds the entries of
    /// some 200,000 tables or large objects.)
    static let limit = 32 << 20

    init(keepText: Bool) { self.keepText = keepText }

    /// Whether the table was read, or can never be.
    var isDecided: Bool {
        if case .needMore = reading { return false }
        return true
    }

    /// Takes the next bytes; does nothing once decided.
    mutating func feed(_ chunk: UnsafeRawBufferPointer) {
        guard !isDecided, !chunk.isEmpty else { return }
        bytes.append(contentsOf: chunk)
        // Parsing from the start again only when the bytes doubled keeps this linear.
        guard bytes.count >= nextAttempt || bytes.count >= Self.limit else { return }
        nextAttempt = bytes.count * 2
        attempt()
    }

    /// The end of the stream: whatever was gathered is all there is.
    mutating func finish() {
        guard !isDecided else { return }
        attempt()
        if case .needMore = reading { reading = .unreadable(reason: "the dump ends inside its table of contents") }
    }

    private mutating func attempt() {
        reading = DumpTableOfContents.read(bytes, keepText: keepText)
        if case .needMore = reading, bytes.count >= Self.limit {
            reading = .unreadable(reason: "its table of contents is larger than \(Self.limit >> 20) MiB")
        }
        if case .read = reading {} else if isDecided { bytes = [] }
    }
}
