import SnapCore

/// Finds, as a custom-format dump (`pg_dump -Fc`) streams past, where each entry's data starts,
/// so that a copy of the dump on disk can be given the offsets pg_dump could not write.
///
/// pg_dump writing to a pipe leaves every data offset in the table of contents "not set". A
/// parallel `pg_restore --jobs` then has each worker read the archive from the start to find the
/// table it restores, skipping every row block before it (about 0.45 s on a 200 MB pgbench dump,
/// more than the parallelism gains there). pg_dump writing to a file rewrites its table of
/// contents at the end with the offsets; `patches` gives the same bytes for a spooled copy.
///
/// Layout (pg_backup_archiver.c `WriteHead`/`WriteToc`, pg_backup_custom.c): the header; an int
/// count of entries, each with its id, fields (strings and ints, varying with the format
/// version), dependencies (strings up to a null one), then the data offset: a state byte
/// (1 not set, 2 set, 3 no data) and `offSize` little-endian bytes. Then the data blocks: a type
/// byte (1 data, 3 large objects), the entry's id, and length-prefixed chunks ending with a 0
/// length (for large objects: per object an OID then such chunks, ending with OID 0). An int is a
/// sign byte and `intSize` little-endian bytes; a string an int length (-1: null) and the bytes.
///
/// Anything unexpected (another format, an unknown version, a malformed block) makes the index
/// give up: the copy then stays as pg_dump wrote it, which pg_restore reads just the same.
struct DumpDataIndex {
    /// A table of contents entry's data offset field.
    struct OffsetField {
        var dumpID: Int
        /// Where the state byte is, from the start of the dump.
        var position: Int
        var state: UInt8
        var storedOffset: Int
    }

    private(set) var fields: [OffsetField] = []
    /// Where each entry's data block starts (its type byte), by entry id.
    private(set) var dataStarts: [Int: Int] = [:]
    private(set) var failed = false

    private var headerBytes: [UInt8] = []
    private var nextHeaderAttempt = 4096
    private var intSize = 4
    private var offsetSize = 8
    /// Bytes seen so far.
    private var position = 0
    private var state = State.header
    /// The bytes of a field that straddles two feeds.
    private var field: [UInt8] = []

    private enum State {
        case header
        case blockType
        case blockID(type: UInt8, start: Int)
        case chunkLength(largeObjects: Bool)
        case skip(Int, largeObjects: Bool)
        case objectID
    }

    private static let blockData: UInt8 = 1
    private static let blockLargeObjects: UInt8 = 3
    /// The header and table of contents are read whole; beyond this, give up.
    /// (32 MiB holds the entries of some 200,000 tables or large objects.)
    private static let headerLimit = 32 << 20

    /// Takes the next bytes of the dump.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !failed, !bytes.isEmpty else { return }
        if case .header = state {
            headerBytes.append(contentsOf: bytes)
            position += bytes.count
            // Parsing from the start again only when the bytes doubled keeps this linear.
            guard headerBytes.count >= nextHeaderAttempt || headerBytes.count >= Self.headerLimit else { return }
            nextHeaderAttempt = headerBytes.count * 2
            switch parseHeader() {
            case .needMore:
                if headerBytes.count >= Self.headerLimit { fail() }
            case .invalid:
                fail()
            case .done(let tableEnd):
                let rest = headerBytes[tableEnd...]
                let restStart = position - rest.count
                headerBytes = []
                state = .blockType
                position = restStart
                Array(rest).withUnsafeBytes { scanBlocks($0) }
            }
            return
        }
        scanBlocks(bytes)
    }

    /// Call at the end of the dump. The bytes to write over the spooled copy (at each position)
    /// to set the data offsets it lacks; empty when there is nothing to set or the dump could not
    /// be read.
    mutating func finish() -> [(position: Int, bytes: [UInt8])] {
        if case .header = state, !failed {
            // A dump shorter than the first parsing attempt.
            if case .done(let tableEnd) = parseHeader() {
                let rest = Array(headerBytes[tableEnd...])
                position = position - rest.count
                state = .blockType
                headerBytes = []
                rest.withUnsafeBytes { scanBlocks($0) }
            } else {
                fail()
            }
        }
        guard readWhole else { return [] }
        return fields.compactMap { field in
            guard field.state == 1, let start = dataStarts[field.dumpID] else { return nil }
            var bytes: [UInt8] = [2]
            for index in 0..<offsetSize { bytes.append(UInt8(truncatingIfNeeded: start >> (8 * index))) }
            return (field.position, bytes)
        }
    }

    /// Whether everything fed so far parsed and ended between two blocks: only then was the dump
    /// read whole.
    private var readWhole: Bool {
        guard !failed, case .blockType = state else { return false }
        return field.isEmpty
    }

    /// The data blocks' layout; call after `finish`. nil when the dump could not be read whole.
    var tableData: DatabaseFacts.TableData? {
        guard readWhole else { return nil }
        let starts = dataStarts.values.sorted()
        guard !starts.isEmpty else { return DatabaseFacts.TableData(entries: 0, largestBytes: 0, totalBytes: 0) }
        var largest = 0
        for (index, start) in starts.enumerated() {
            let end = index + 1 < starts.count ? starts[index + 1] : position
            largest = max(largest, end - start)
        }
        return DatabaseFacts.TableData(
            entries: starts.count, largestBytes: Int64(largest), totalBytes: Int64(position - starts[0]))
    }

    private mutating func fail() {
        failed = true
        headerBytes = []
        field = []
    }

    // MARK: Data blocks

    private mutating func scanBlocks(_ bytes: UnsafeRawBufferPointer) {
        var index = 0
        while index < bytes.count && !failed {
            switch state {
            case .header:
                return
            case .skip(let remaining, let largeObjects):
                let step = min(remaining, bytes.count - index)
                index += step
                position += step
                state =
                    remaining == step
                    ? .chunkLength(largeObjects: largeObjects) : .skip(remaining - step, largeObjects: largeObjects)
            case .blockType:
                let type = bytes[index]
                guard type == Self.blockData || type == Self.blockLargeObjects else { return fail() }
                state = .blockID(type: type, start: position)
                index += 1
                position += 1
            case .blockID(let type, let start):
                guard let id = takeInt(bytes, &index) else { continue }
                dataStarts[id] = start
                state = type == Self.blockData ? .chunkLength(largeObjects: false) : .objectID
            case .chunkLength(let largeObjects):
                guard let length = takeInt(bytes, &index) else { continue }
                if length < 0 { return fail() }
                if length == 0 {
                    state = largeObjects ? .objectID : .blockType
                } else {
                    state = .skip(length, largeObjects: largeObjects)
                }
            case .objectID:
                guard let oid = takeInt(bytes, &index) else { continue }
                state = oid == 0 ? .blockType : .chunkLength(largeObjects: true)
            }
        }
    }

    /// Reads an int that may straddle feeds; nil when more bytes are needed (all of these are
    /// kept in `field` meanwhile).
    private mutating func takeInt(_ bytes: UnsafeRawBufferPointer, _ index: inout Int) -> Int? {
        let size = 1 + intSize
        if field.isEmpty && index + size <= bytes.count {
            // The usual case, once per row of a table's data: the whole int is here.
            var value = 0
            for byte in 0..<intSize { value |= Int(bytes[index + 1 + byte]) << (8 * byte) }
            let negative = bytes[index] != 0
            index += size
            position += size
            return negative ? 0 &- value : value
        }
        let step = min(size - field.count, bytes.count - index)
        field.append(contentsOf: bytes[index..<index + step])
        index += step
        position += step
        guard field.count == size else { return nil }
        defer { field.removeAll(keepingCapacity: true) }
        var value = 0
        for byte in 0..<intSize { value |= Int(field[1 + byte]) << (8 * byte) }
        return field[0] != 0 ? 0 &- value : value
    }

    // MARK: Header and table of contents

    private enum HeaderResult {
        case needMore
        case invalid
        /// The table of contents ends at this index of `headerBytes`.
        case done(Int)
    }

    private struct NeedMore: Error {}
    private struct Invalid: Error {}

    private mutating func parseHeader() -> HeaderResult {
        var cursor = Cursor(bytes: headerBytes)
        do {
            guard try cursor.bytes(5) == Array("PGDMP".utf8) else { throw Invalid() }
            let major = Int(try cursor.byte())
            let minor = Int(try cursor.byte())
            _ = try cursor.byte()
            cursor.intSize = Int(try cursor.byte())
            let offsetSize = Int(try cursor.byte())
            let format = try cursor.byte()
            // Custom format 1.11 (the first with a section per entry) up to 1.16 (PostgreSQL 17).
            guard major == 1, (11...16).contains(minor), format == 1, (1...8).contains(cursor.intSize),
                (1...8).contains(offsetSize)
            else { throw Invalid() }
            if minor >= 15 { _ = try cursor.byte() } else { _ = try cursor.int() }  // compression
            for _ in 0..<7 { _ = try cursor.int() }  // creation time
            for _ in 0..<3 { try cursor.skipString() }  // database, server and pg_dump versions
            let count = try cursor.int()
            guard count >= 0 else { throw Invalid() }
            var found: [OffsetField] = []
            for _ in 0..<count {
                let id = try cursor.int()
                _ = try cursor.int()  // has data
                // tableoid, oid, tag, desc; section; defn, drop, copy, namespace, tablespace
                for _ in 0..<4 { try cursor.skipString() }
                _ = try cursor.int()
                for _ in 0..<5 { try cursor.skipString() }
                if minor >= 14 { try cursor.skipString() }  // table access method
                if minor >= 16 { _ = try cursor.int() }  // relkind
                try cursor.skipString()  // owner
                try cursor.skipString()  // "false": no OIDs
                while try cursor.skipString() {}  // dependencies, up to a null string
                let position = cursor.index
                let state = try cursor.byte()
                var offset = 0
                for byte in try cursor.bytes(offsetSize).enumerated() {
                    offset |= Int(byte.element) << (8 * byte.offset)
                }
                found.append(OffsetField(dumpID: id, position: position, state: state, storedOffset: offset))
            }
            fields = found
            intSize = cursor.intSize
            self.offsetSize = offsetSize
            return .done(cursor.index)
        } catch is NeedMore {
            return .needMore
        } catch {
            return .invalid
        }
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

        mutating func bytes(_ count: Int) throws -> [UInt8] {
            // Lengths come from the archive: compared so that no sum can overflow.
            guard count <= bytes.count - index else { throw NeedMore() }
            defer { index += count }
            return Array(bytes[index..<index + count])
        }

        mutating func int() throws -> Int {
            let raw = try bytes(1 + intSize)
            var value = 0
            for byte in 0..<intSize { value |= Int(raw[1 + byte]) << (8 * byte) }
            return raw[0] != 0 ? 0 &- value : value
        }

        /// Skips a string; false when it was the null string.
        @discardableResult
        mutating func skipString() throws -> Bool {
            let length = try int()
            guard length >= 0 else { return false }
            guard length <= bytes.count - index else { throw NeedMore() }
            index += length
            return true
        }
    }
}
