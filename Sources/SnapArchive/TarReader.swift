import SnapCore

/// Reads a tar stream through a closure, one entry at a time, with bounded memory.
///
/// Understands ustar (`ustar\0` `00`, with the prefix field), GNU (`ustar  \0`, with `L`/`K`
/// long names), pax (`x` records for path, linkpath, size and mtime; other records and `g`
/// global headers are skipped) and old v7 headers. Checksums are verified (signed and unsigned
/// sums both count); a pax path or linkpath holding a NUL byte is refused. The archive ends at
/// two zero blocks, or at the end of the input after one; the rest of the input is then read and
/// discarded, so a gzip layer underneath gets to check its trailer. Malformed input throws
/// `SnapError` with code `.corrupt`, naming the problem.
///
/// Not thread-safe: call it from one thread.
public final class TarReader {
    /// Extended headers larger than this are refused, to keep memory bounded.
    public static let maxExtendedHeaderSize = 1 << 20

    /// The pax records the reader uses; the others are dropped as they are parsed, so that any
    /// number of extended headers before one entry holds at most these four values in memory.
    static let paxKeys = ["path", "linkpath", "size", "mtime"]

    private let source: (UnsafeMutableRawBufferPointer) throws -> Int
    private let buffer: UnsafeMutableRawBufferPointer
    private var bufferStart = 0
    private var bufferEnd = 0
    private var sourceEnded = false

    /// Content bytes of the current entry not yet read, and the padding after them.
    private var contentLeft: UInt64 = 0
    private var paddingLeft = 0
    private var ended = false
    private var entryCount = 0
    private var currentName = ""

    /// Bytes consumed from the source so far (the offset of the next unread byte).
    public private(set) var offset: UInt64 = 0

    /// `source` fills the buffer it gets and returns the byte count, 0 at the end of the input.
    public init(bufferSize: Int = 64 << 10, source: @escaping (UnsafeMutableRawBufferPointer) throws -> Int) {
        self.source = source
        buffer = .allocate(byteCount: max(Tar.blockSize, bufferSize), alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// The next entry, skipping whatever is left of the current one; nil at the end of the archive.
    public func next() throws -> TarHeaderEntry? {
        if ended { return nil }
        try skip(contentLeft + UInt64(paddingLeft))
        contentLeft = 0
        paddingLeft = 0

        var pax: [String: [UInt8]] = [:]
        var longName: [UInt8]?
        var longLink: [UInt8]?
        var header = [UInt8](repeating: 0, count: Tar.blockSize)
        while true {
            let headerOffset = offset
            guard try readBlock(into: &header) else {
                if pax.isEmpty && longName == nil && longLink == nil {
                    throw SnapError(
                        .corrupt,
                        "the tar archive is truncated: it ends at byte \(offset) without an end-of-archive marker")
                }
                throw SnapError(.corrupt, "the tar archive is truncated: it ends after an extended header")
            }
            if header.allSatisfy({ $0 == 0 }) {
                try endOfArchive(at: headerOffset)
                return nil
            }
            try verifyChecksum(header, at: headerOffset)
            let type = header[Tar.typeflag]
            let isGNU = header[Tar.magic].elementsEqual("ustar ".utf8) && header[Tar.version].elementsEqual([0x20, 0])
            let isUstar = header[Tar.magic].elementsEqual("ustar\0".utf8)
            let size = try number(header, Tar.size, "size", at: headerOffset)
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K"):
                guard size <= UInt64(Self.maxExtendedHeaderSize) else {
                    throw SnapError(
                        .corrupt,
                        "tar header at byte \(headerOffset): extended header of \(size) bytes exceeds the \(Self.maxExtendedHeaderSize)-byte limit"
                    )
                }
                let body = try readExact(Int(size), what: "extended header")
                try skip(UInt64(Self.padding(size)))
                switch type {
                case UInt8(ascii: "x"): try Self.parsePax(body, at: headerOffset, into: &pax)
                case UInt8(ascii: "L"): longName = Array(body.prefix { $0 != 0 })
                case UInt8(ascii: "K"): longLink = Array(body.prefix { $0 != 0 })
                default: break  // global pax headers: nothing snap needs
                }
                continue
            default:
                break
            }

            // A real entry: ustar fields, overridden by GNU long names, overridden by pax.
            var name = Self.field(header, Tar.name)
            if isUstar && !isGNU {
                let prefix = Self.field(header, Tar.prefix)
                if !prefix.isEmpty { name = prefix + [UInt8(ascii: "/")] + name }
            }
            if let longName { name = longName }
            // A NUL ends a name in every system call: whatever follows it would be cut off when
            // the entry is written out, after every check has seen the whole name.
            if let path = pax["path"] {
                guard !path.contains(0) else {
                    throw Self.nulError(at: headerOffset, "the pax path \"\(Tar.shown(path))\"", "file name")
                }
                name = path
            }
            var link = longLink ?? Self.field(header, Tar.linkname)
            if let path = pax["linkpath"] {
                guard !path.contains(0) else {
                    throw Self.nulError(
                        at: headerOffset,
                        "the link target of '\(Tar.shown(name))' (pax linkpath \"\(Tar.shown(path))\")", "link")
                }
                link = path
            }

            var entrySize = size
            if let text = pax["size"] {
                guard let value = Self.decimal(text) else {
                    throw SnapError(.corrupt, "tar header at byte \(headerOffset): bad pax size \"\(Self.show(text))\"")
                }
                entrySize = value
            }
            var mtime = try Int64(bitPattern: number(header, Tar.mtime, "mtime", at: headerOffset, signed: true))
            mtime = mtime.multipliedReportingOverflow(by: Tar.nanosecondsPerSecond).overflow ? 0 : mtime * 1_000_000_000
            if let text = pax["mtime"] {
                guard let value = Self.paxTime(text) else {
                    throw SnapError(
                        .corrupt, "tar header at byte \(headerOffset): bad pax mtime \"\(Self.show(text))\"")
                }
                mtime = value
            }
            let mode = UInt32(truncatingIfNeeded: try number(header, Tar.mode, "mode", at: headerOffset)) & 0o7777

            let kind: TarEntryKind
            var hasContent = false
            switch type {
            case 0, UInt8(ascii: "0"), UInt8(ascii: "7"):
                // v7 tar marks directories with a trailing slash on a regular-file type.
                if type == 0 && name.last == UInt8(ascii: "/") {
                    kind = .directory
                } else {
                    kind = .file
                    hasContent = true
                }
            case UInt8(ascii: "1"): kind = .hardlink
            case UInt8(ascii: "2"): kind = .symlink
            case UInt8(ascii: "5"): kind = .directory
            case UInt8(ascii: "3"), UInt8(ascii: "4"), UInt8(ascii: "6"):
                kind = .other(Character(Unicode.Scalar(type)))
            default:
                // Unknown types (GNU sparse, volume labels, ...): their content is skipped.
                kind = .other(Character(Unicode.Scalar(type)))
                hasContent = true
            }
            if kind == .directory {
                while name.count > 1 && name.last == UInt8(ascii: "/") { name.removeLast() }
            }
            guard !name.isEmpty else {
                throw SnapError(.corrupt, "tar header at byte \(headerOffset): the entry has an empty name")
            }
            entryCount += 1
            contentLeft = hasContent ? entrySize : 0
            paddingLeft = hasContent ? Self.padding(entrySize) : 0
            let path = String(decoding: name, as: UTF8.self)
            currentName = path
            let isLink = kind == .symlink || kind == .hardlink
            return TarHeaderEntry(
                path: path, kind: kind, mode: mode, mtime: mtime, size: contentLeft,
                linkTarget: isLink ? String(decoding: link, as: UTF8.self) : nil, rawPath: name,
                rawLinkTarget: isLink ? link : nil)
        }
    }

    /// Reads content of the current entry; returns 0 at its end.
    public func readContent(into destination: UnsafeMutableRawBufferPointer) throws -> Int {
        guard contentLeft > 0, destination.count > 0 else { return 0 }
        let want = Int(min(UInt64(destination.count), contentLeft))
        var n: Int
        if bufferEnd > bufferStart {
            n = min(want, bufferEnd - bufferStart)
            destination.baseAddress!.copyMemory(from: buffer.baseAddress! + bufferStart, byteCount: n)
            bufferStart += n
        } else if want >= buffer.count / 2 && !sourceEnded {
            // Large reads go straight into the caller's buffer.
            n = try source(UnsafeMutableRawBufferPointer(rebasing: destination[0..<want]))
            precondition(n >= 0 && n <= want, "TarReader source returned \(n) for a \(want)-byte buffer")
            if n == 0 { sourceEnded = true }
        } else {
            try fill()
            n = min(want, bufferEnd - bufferStart)
            if n > 0 {
                destination.baseAddress!.copyMemory(from: buffer.baseAddress! + bufferStart, byteCount: n)
                bufferStart += n
            }
        }
        if n == 0 {
            throw SnapError(
                .corrupt, "the tar archive is truncated: \(currentName) ends \(contentLeft) bytes before its size")
        }
        contentLeft -= UInt64(n)
        offset += UInt64(n)
        return n
    }

    // MARK: - Headers

    private func endOfArchive(at headerOffset: UInt64) throws {
        ended = true
        var second = [UInt8](repeating: 0, count: Tar.blockSize)
        if try readBlock(into: &second), !second.allSatisfy({ $0 == 0 }) {
            throw SnapError(
                .corrupt, "tar: a lone zero block at byte \(headerOffset) followed by more entries (damaged archive?)")
        }
        // Drain the record padding and anything else, so the layer below sees its end.
        while bufferEnd > bufferStart || !sourceEnded {
            bufferStart = bufferEnd
            try fill()
        }
    }

    private func verifyChecksum(_ header: [UInt8], at headerOffset: UInt64) throws {
        let field = Self.field(header, Tar.checksum)
        guard let stored = Self.octal(field) else {
            throw SnapError(
                .corrupt,
                entryCount == 0 && headerOffset == 0
                    ? "the input is not a tar archive (no valid header at the start)"
                    : "tar header at byte \(headerOffset) is damaged: its checksum field is not a number")
        }
        let sums = header.withUnsafeBytes { Tar.checksums($0) }
        guard Int64(stored) == sums.unsigned || Int64(stored) == sums.signed else {
            throw SnapError(
                .corrupt,
                entryCount == 0 && headerOffset == 0
                    ? "the input is not a tar archive (header checksum mismatch at the start)"
                    : "tar header at byte \(headerOffset) is damaged: checksum mismatch (stored \(stored), computed \(sums.unsigned))"
            )
        }
    }

    /// A numeric field: octal digits with spaces/NULs around them, or GNU base-256 (high bit set).
    private func number(
        _ header: [UInt8], _ range: Range<Int>, _ name: String, at headerOffset: UInt64, signed: Bool = false
    ) throws -> UInt64 {
        let bytes = header[range]
        if let first = bytes.first, first & 0x80 != 0 {
            // Base-256, two's complement; 0xFF lead means negative.
            let negative = first & 0x40 != 0
            var value: UInt64 = negative ? UInt64.max : 0
            for (index, byte) in bytes.enumerated() {
                let digit = index == 0 ? (negative ? byte | 0x80 : byte & 0x7F) : byte
                if bytes.count - index > 8 {
                    guard digit == (negative ? 0xFF : 0) else { throw badNumber(name, bytes, headerOffset) }
                    continue
                }
                value = value << 8 | UInt64(digit)
            }
            guard signed || !negative else { throw badNumber(name, bytes, headerOffset) }
            return value
        }
        guard let value = Self.octal(Array(bytes)) else { throw badNumber(name, bytes, headerOffset) }
        return value
    }

    private func badNumber(_ name: String, _ bytes: ArraySlice<UInt8>, _ headerOffset: UInt64) -> SnapError {
        SnapError(
            .corrupt, "tar header at byte \(headerOffset) is damaged: bad \(name) field \"\(Self.show(Array(bytes)))\"")
    }

    /// Octal digits, optionally surrounded by spaces and ended by NUL or space; empty means 0.
    static func octal(_ bytes: [UInt8]) -> UInt64? {
        var index = 0
        while index < bytes.count && bytes[index] == 0x20 { index += 1 }
        var value: UInt64 = 0
        var digits = 0
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(bytes[index]) {
            let (shifted, overflow) = value.multipliedReportingOverflow(by: 8)
            if overflow { return nil }
            value = shifted + UInt64(bytes[index] - UInt8(ascii: "0"))
            digits += 1
            index += 1
        }
        while index < bytes.count && (bytes[index] == 0x20 || bytes[index] == 0) { index += 1 }
        return index == bytes.count ? value : nil
    }

    /// A NUL-terminated text field.
    static func field(_ header: [UInt8], _ range: Range<Int>) -> [UInt8] {
        Array(header[range].prefix { $0 != 0 })
    }

    static func padding(_ size: UInt64) -> Int {
        Int((UInt64(Tar.blockSize) - size % UInt64(Tar.blockSize)) % UInt64(Tar.blockSize))
    }

    /// Pax records, `"%d %s=%s\n"` each; later records override earlier ones. Only the records
    /// named in `paxKeys` are kept.
    static func parsePax(_ body: [UInt8], at headerOffset: UInt64, into records: inout [String: [UInt8]]) throws {
        func malformed(_ why: String) -> SnapError {
            SnapError(.corrupt, "tar header at byte \(headerOffset): malformed pax extended header (\(why))")
        }
        var index = 0
        while index < body.count {
            // Some writers pad the block with NULs after the last record.
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
            let keyBytes = record[record.startIndex..<equals]
            if let key = paxKeys.first(where: { keyBytes.elementsEqual($0.utf8) }) {
                records[key] = Array(record[(equals + 1)...])
            }
            index = end
        }
    }

    /// The error for a pax name (`what`) holding a NUL byte, which no `holder` can hold.
    static func nulError(at headerOffset: UInt64, _ what: String, _ holder: String) -> SnapError {
        SnapError(
            .corrupt,
            "tar header at byte \(headerOffset): \(what) holds a NUL byte, which no \(holder) can hold: the archive is damaged or crafted; make it again from the original files"
        )
    }

    static func decimal(_ text: [UInt8]) -> UInt64? {
        guard !text.isEmpty, text.count <= 20 else { return nil }
        var value: UInt64 = 0
        for byte in text {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            let (shifted, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = shifted.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            if overflow1 || overflow2 { return nil }
            value = sum
        }
        return value
    }

    /// A pax time `[-]SECONDS[.FRACTION]` in nanoseconds (fraction digits past 9 are dropped).
    static func paxTime(_ text: [UInt8]) -> Int64? {
        var bytes = text[...]
        let negative = bytes.first == UInt8(ascii: "-")
        if negative { bytes = bytes.dropFirst() }
        let dot = bytes.firstIndex(of: UInt8(ascii: ".")) ?? bytes.endIndex
        guard let seconds = decimal(Array(bytes[..<dot])), seconds <= UInt64(Int64.max / 1_000_000_000) else {
            return nil
        }
        var nanos: Int64 = 0
        if dot < bytes.endIndex {
            let fraction = bytes[(dot + 1)...]
            guard fraction.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
            var scale: Int64 = 100_000_000
            for digit in fraction.prefix(9) {
                nanos += Int64(digit - UInt8(ascii: "0")) * scale
                scale /= 10
            }
        }
        let (magnitude, overflow) = (Int64(seconds) * 1_000_000_000).addingReportingOverflow(nanos)
        if overflow { return nil }
        return negative ? -magnitude : magnitude
    }

    static func show(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix(40).map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }

    // MARK: - Input

    /// Refills the buffer after its unread bytes, unless the source has ended.
    private func fill() throws {
        if bufferStart > 0 {
            let unread = bufferEnd - bufferStart
            if unread > 0 {
                buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + bufferStart, byteCount: unread)
            }
            bufferStart = 0
            bufferEnd = unread
        }
        guard !sourceEnded, bufferEnd < buffer.count else { return }
        let n = try source(UnsafeMutableRawBufferPointer(rebasing: buffer[bufferEnd...]))
        precondition(n >= 0 && n <= buffer.count - bufferEnd, "TarReader source returned \(n)")
        if n == 0 { sourceEnded = true }
        bufferEnd += n
    }

    /// One 512-byte block; false at a clean end of input, throws when it stops mid-block.
    private func readBlock(into block: inout [UInt8]) throws -> Bool {
        while bufferEnd - bufferStart < Tar.blockSize && !sourceEnded { try fill() }
        let available = bufferEnd - bufferStart
        if available == 0 { return false }
        guard available >= Tar.blockSize else {
            throw SnapError(.corrupt, "the tar archive is truncated: it ends inside a header at byte \(offset)")
        }
        block.withUnsafeMutableBytes {
            $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[bufferStart..<(bufferStart + Tar.blockSize)]))
        }
        bufferStart += Tar.blockSize
        offset += UInt64(Tar.blockSize)
        return true
    }

    private func readExact(_ count: Int, what: String) throws -> [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(count)
        while result.count < count {
            if bufferEnd == bufferStart { try fill() }
            let n = min(count - result.count, bufferEnd - bufferStart)
            if n == 0 { throw SnapError(.corrupt, "the tar archive is truncated: it ends inside an \(what)") }
            result.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[bufferStart..<(bufferStart + n)]))
            bufferStart += n
            offset += UInt64(n)
        }
        return result
    }

    private func skip(_ count: UInt64) throws {
        var left = count
        while left > 0 {
            if bufferEnd == bufferStart { try fill() }
            let n = Int(min(left, UInt64(bufferEnd - bufferStart)))
            if n == 0 {
                throw SnapError(
                    .corrupt, "the tar archive is truncated: \(currentName) ends before its size and padding")
            }
            bufferStart += n
            offset += UInt64(n)
            left -= UInt64(n)
        }
    }
}
