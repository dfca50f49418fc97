import SnapCore

/// The records of one pax extended header that change what tar extracts: the name, the link
/// target, the size, the modification time, GNU's sparse-file records, and GNU's multi-volume
/// records. Every other record (owners, access and change times, extended attributes, comments,
/// `hdrcharset`) is dropped as it is parsed: snap records none of them, and `tar -x` run without
/// `--xattrs` or `--acls` applies none that changes a file's name, kind, content, mode or mtime.
/// So any extended header holds at most these values in memory, bounded by the header's size.
struct PaxRecords {
    var path: [UInt8]?
    var linkpath: [UInt8]?
    var size: [UInt8]?
    var mtime: [UInt8]?
    var sparse = SparseRecords()
    /// A `GNU.volume.filename`, `.size` or `.offset` record: the entry continues a file from
    /// another volume of a multi-volume archive.
    var volumeKey: String?

    /// The first record that would change what tar extracts, in the order listed above; nil when
    /// there is none (a global header with only a comment, say).
    var firstKey: String? {
        if path != nil { return "path" }
        if linkpath != nil { return "linkpath" }
        if size != nil { return "size" }
        if mtime != nil { return "mtime" }
        if let key = sparse.firstKey { return key }
        return volumeKey
    }

    /// Parses `"%d %s=%s\n"` records. A key given twice keeps its later value, as in GNU tar and
    /// Python's tarfile, except the repeated `GNU.sparse.offset`/`numbytes` pairs of sparse
    /// format 0.0, which are kept in order. Some writers pad the body with NULs after the last
    /// record. Malformed framing throws `.corrupt`.
    static func parse(_ body: [UInt8], at headerOffset: UInt64) throws -> PaxRecords {
        func malformed(_ why: String) -> SnapError {
            SnapError(.corrupt, "tar header at byte \(headerOffset): malformed pax extended header (\(why))")
        }
        var records = PaxRecords()
        var index = 0
        while index < body.count {
            if body[index] == 0 && body[index...].allSatisfy({ $0 == 0 }) { break }
            var length = 0
            var cursor = index
            while cursor < body.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(body[cursor]) {
                length = length * 10 + Int(body[cursor] - UInt8(ascii: "0"))
                guard length <= body.count else { throw malformed("record length past the end") }
                cursor += 1
            }
            guard cursor > index, cursor < body.count, body[cursor] == 0x20 else {
                throw malformed("a record does not start with a length")
            }
            let end = index + length
            guard end <= body.count, end > cursor + 1, body[end - 1] == UInt8(ascii: "\n") else {
                throw malformed("a record length does not match its text")
            }
            let record = body[(cursor + 1)..<(end - 1)]
            guard let equals = record.firstIndex(of: UInt8(ascii: "=")), equals > record.startIndex else {
                throw malformed("a record has no key=value")
            }
            records.take(key: record[record.startIndex..<equals], value: Array(record[(equals + 1)...]))
            index = end
        }
        return records
    }

    private mutating func take(key: ArraySlice<UInt8>, value: [UInt8]) {
        func equals(_ name: String) -> Bool { key.elementsEqual(name.utf8) }
        if equals("path") {
            path = value
        } else if equals("linkpath") {
            linkpath = value
        } else if equals("size") {
            size = value
        } else if equals("mtime") {
            mtime = value
        } else if key.starts(with: "GNU.sparse.".utf8) {
            sparse.take(key: String(decoding: key.dropFirst(11), as: UTF8.self), value: value)
        } else if equals("GNU.volume.filename") || equals("GNU.volume.size") || equals("GNU.volume.offset") {
            volumeKey = volumeKey ?? String(decoding: key, as: UTF8.self)
        }
    }
}

/// The `GNU.sparse.*` records of one extended header (see `SparseMap` for the formats).
struct SparseRecords {
    var major: [UInt8]?
    var minor: [UInt8]?
    var name: [UInt8]?
    var realSize: [UInt8]?
    var size: [UInt8]?
    var numberOfBlocks: [UInt8]?
    var map: [UInt8]?
    /// Format 0.0's `offset` and `numbytes` records, in the order they came.
    var pairs: [(isOffset: Bool, value: [UInt8])] = []
    /// A `GNU.sparse.*` record of a kind GNU tar does not write.
    var unknownKey: String?

    var isEmpty: Bool { firstKey == nil }

    var firstKey: String? {
        let present: [(String, Bool)] = [
            ("major", major != nil), ("minor", minor != nil), ("name", name != nil), ("realsize", realSize != nil),
            ("size", size != nil), ("numblocks", numberOfBlocks != nil), ("map", map != nil),
            ("offset", !pairs.isEmpty),
        ]
        if let key = present.first(where: \.1)?.0 { return "GNU.sparse." + key }
        return unknownKey.map { "GNU.sparse." + $0 }
    }

    mutating func take(key: String, value: [UInt8]) {
        switch key {
        case "major": major = value
        case "minor": minor = value
        case "name": name = value
        case "realsize": realSize = value
        case "size": size = value
        case "numblocks": numberOfBlocks = value
        case "map": map = value
        case "offset": pairs.append((true, value))
        case "numbytes": pairs.append((false, value))
        default: unknownKey = unknownKey ?? key
        }
    }
}
