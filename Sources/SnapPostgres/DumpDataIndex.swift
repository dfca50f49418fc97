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
/// `DumpTableOfContents` reads the header and the table of contents, whose entries each end
/// with their data offset field. Then come the data blocks (pg_backup_custom.c): a type byte
/// (1 data, 3 large objects), the entry's id, and length-prefixed chunks ending with a 0 length
/// (for large objects: per object an OID then such chunks, ending with OID 0). An int is a sign
/// byte and `intSize` little-endian bytes.
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

    private var header = TableOfContentsCollector(keepText: false)
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

    /// Takes the next bytes of the dump.
    mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        guard !failed, !bytes.isEmpty else { return }
        guard case .header = state else { return scanBlocks(bytes) }
        header.feed(bytes)
        position += bytes.count
        takeHeader()
    }

    /// Call at the end of the dump. The bytes to write over the spooled copy (at each position)
    /// to set the data offsets it lacks; empty when there is nothing to set or the dump could not
    /// be read.
    mutating func finish() -> [(position: Int, bytes: [UInt8])] {
        if case .header = state, !failed {
            // A dump shorter than the first parsing attempt.
            header.finish()
            takeHeader()
        }
        guard readWhole else { return [] }
        return fields.compactMap { field in
            guard field.state == 1, let start = dataStarts[field.dumpID] else { return nil }
            var bytes: [UInt8] = [2]
            for index in 0..<offsetSize { bytes.append(UInt8(truncatingIfNeeded: start >> (8 * index))) }
            return (field.position, bytes)
        }
    }

    /// Once the table of contents is read: its offset fields, then the data blocks that came
    /// with it.
    private mutating func takeHeader() {
        switch header.reading {
        case .needMore:
            return
        case .notCustomFormat, .unreadable:
            fail()
        case .read(let contents):
            fields = contents.entries.map {
                OffsetField(
                    dumpID: $0.dumpID, position: $0.offsetPosition, state: $0.offsetState,
                    storedOffset: $0.storedOffset)
            }
            intSize = contents.intSize
            offsetSize = contents.offsetSize
            let rest = Array(header.bytes[contents.end...])
            header = TableOfContentsCollector(keepText: false)
            state = .blockType
            position -= rest.count
            rest.withUnsafeBytes { scanBlocks($0) }
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
        header = TableOfContentsCollector(keepText: false)
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
}
