import SnapCore

/// Reads a tar stream through a closure, one entry at a time, with bounded memory.
///
/// It reports what GNU tar (`tar -x`) extracts, and refuses, with a `.corrupt` error naming the
/// header, whatever GNU tar and Python's tarfile read differently or cannot read: snap records an
/// archive only when what it holds is not in doubt. Understood are ustar (`ustar\0`, with the
/// prefix field), GNU (`ustar  \0`, with `L`/`K` long names), pax (`x` and Solaris `X` records for
/// path, linkpath, size and mtime; other records are skipped, see `PaxRecords`), old v7 headers,
/// and sparse files in all four GNU layouts (`SparseMap`), expanded as they are read. Global
/// headers (`g`) may carry only records that change nothing tar extracts (a comment, say); a
/// volume label (`V`) is skipped, as GNU tar skips it. Numeric fields are octal, or base-256
/// with a leading 0x80 or 0xFF byte; checksums are verified (signed and unsigned sums both
/// count). The archive ends at two zero blocks, or at the end of the input after one; the rest of
/// the input is then read and discarded, so a gzip layer underneath gets to check its trailer.
///
/// Not thread-safe: call it from one thread.
public final class TarReader {
    /// Extended headers larger than this are refused, to keep memory bounded.
    public static let maxExtendedHeaderSize = 1 << 20
    /// Sparse maps with more regions than this are refused: a map is held in memory while the
    /// entry's data is read (16 bytes a region).
    public static let maxSparseRegions = 1 << 20

    private let source: (UnsafeMutableRawBufferPointer) throws -> Int
    private let buffer: UnsafeMutableRawBufferPointer
    private var bufferStart = 0
    private var bufferEnd = 0
    private var sourceEnded = false

    /// Archive bytes of the current entry's content not yet read, and the padding after them.
    private var contentLeft: UInt64 = 0
    private var paddingLeft = 0
    /// The current entry's expansion when it is sparse.
    private var sparse: SparseCursor?
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

    /// How a header's magic field says to read it: only ustar headers have a prefix field, only
    /// GNU headers an old-style sparse map.
    enum Format {
        case ustar, gnu, v7

        init(_ header: [UInt8]) {
            if header[Tar.magic].elementsEqual("ustar\0".utf8) {
                self = .ustar
            } else if header[Tar.magic].elementsEqual("ustar ".utf8) && header[Tar.version].elementsEqual([0x20, 0]) {
                self = .gnu
            } else {
                self = .v7
            }
        }
    }

    /// The next entry, skipping whatever is left of the current one; nil at the end of the archive.
    public func next() throws -> TarHeaderEntry? {
        if ended { return nil }
        try skip(contentLeft + UInt64(paddingLeft))
        contentLeft = 0
        paddingLeft = 0
        sparse = nil

        // At most one of each extended header before an entry: when two come, GNU tar takes the
        // later one and Python's tarfile the earlier one.
        var pax: PaxRecords?
        var longName: [UInt8]?
        var longLink: [UInt8]?
        var header = [UInt8](repeating: 0, count: Tar.blockSize)
        while true {
            let headerOffset = offset
            let pending = pax != nil || longName != nil || longLink != nil
            guard try readBlock(into: &header) else {
                if !pending {
                    throw SnapError(
                        .corrupt,
                        "the tar archive is truncated: it ends at byte \(offset) without an end-of-archive marker")
                }
                throw SnapError(.corrupt, "the tar archive is truncated: it ends after an extended header")
            }
            if header.allSatisfy({ $0 == 0 }) {
                if pending {
                    throw SnapError(
                        .corrupt,
                        "the tar archive is damaged: it ends at byte \(headerOffset), after an extended header but before the entry it describes"
                    )
                }
                try endOfArchive(at: headerOffset)
                return nil
            }
            try verifyChecksum(header, at: headerOffset)
            let type = header[Tar.typeflag]
            switch type {
            case UInt8(ascii: "x"), UInt8(ascii: "X"):
                guard pax == nil else {
                    throw Self.ambiguous(at: headerOffset, "a second pax extended header for the same entry")
                }
                pax = try PaxRecords.parse(try readExtended(header, at: headerOffset), at: headerOffset)
                continue
            case UInt8(ascii: "g"):
                guard !pending else {
                    throw Self.ambiguous(
                        at: headerOffset, "a global pax header between an extended header and its entry")
                }
                let records = try PaxRecords.parse(try readExtended(header, at: headerOffset), at: headerOffset)
                if let key = records.firstKey {
                    throw Self.ambiguous(
                        at: headerOffset,
                        "a global pax header setting '\(key)' for every entry after it (GNU tar and Python's tarfile differ on how long it holds)"
                    )
                }
                continue
            case UInt8(ascii: "L"), UInt8(ascii: "K"):
                let isName = type == UInt8(ascii: "L")
                guard (isName ? longName : longLink) == nil else {
                    throw Self.ambiguous(
                        at: headerOffset, "a second GNU long \(isName ? "name" : "link") for the same entry")
                }
                let body = Array(try readExtended(header, at: headerOffset).prefix { $0 != 0 })
                if isName { longName = body } else { longLink = body }
                continue
            case UInt8(ascii: "V"):
                // A volume label (tar -V): GNU tar extracts nothing for it.
                guard !pending else {
                    throw Self.ambiguous(at: headerOffset, "an extended header for a volume label")
                }
                let size = try number(header, Tar.size, "size", at: headerOffset)
                try skip(size + UInt64(Self.padding(size)))
                continue
            default:
                break
            }
            return try entry(header, at: headerOffset, pax: pax, longName: longName, longLink: longLink)
        }
    }

    /// A real entry: ustar fields, overridden by GNU long names, overridden by pax records,
    /// overridden by a sparse file's real name.
    private func entry(
        _ header: [UInt8], at headerOffset: UInt64, pax: PaxRecords?, longName: [UInt8]?, longLink: [UInt8]?
    ) throws -> TarHeaderEntry {
        let type = header[Tar.typeflag]
        let format = Format(header)
        func ambiguous(_ what: String) -> SnapError { Self.ambiguous(at: headerOffset, what) }

        var name = Self.field(header, Tar.name)
        if format == .ustar {
            let prefix = Self.field(header, Tar.prefix)
            if !prefix.isEmpty { name = prefix + [UInt8(ascii: "/")] + name }
        } else if type != UInt8(ascii: "S") && header[Tar.prefix.lowerBound] != 0 {
            // GNU tar reads the prefix field of ustar headers only; Python's tarfile of all.
            throw ambiguous("a name part in the prefix field of a header that is not ustar")
        }
        var nameFromHeader = true
        if let longName {
            name = longName
            nameFromHeader = false
        }
        // A NUL ends a name in every system call: whatever follows it would be cut off when the
        // entry is written out, after every check has seen the whole name.
        if let path = pax?.path {
            guard longName == nil else { throw ambiguous("both a GNU long name and a pax path") }
            guard !path.contains(0) else {
                throw Self.nulError(at: headerOffset, "the pax path \"\(Tar.shown(path))\"", "file name")
            }
            name = path
            nameFromHeader = false
        }
        let sparseRecords = pax?.sparse ?? SparseRecords()
        if let sparseName = sparseRecords.name {
            // GNU tar's real name of a sparse file wins over every other name, whatever the order.
            guard !sparseName.contains(0) else {
                throw Self.nulError(at: headerOffset, "the GNU.sparse.name \"\(Tar.shown(sparseName))\"", "file name")
            }
            name = sparseName
            nameFromHeader = false
        }
        var link = longLink ?? Self.field(header, Tar.linkname)
        if let path = pax?.linkpath {
            guard longLink == nil else { throw ambiguous("both a GNU long link and a pax linkpath") }
            guard !path.contains(0) else {
                throw Self.nulError(
                    at: headerOffset, "the link target of '\(Tar.shown(name))' (pax linkpath \"\(Tar.shown(path))\")",
                    "link")
            }
            link = path
        }
        if let key = pax?.volumeKey {
            throw SnapError(
                .corrupt,
                "tar header at byte \(headerOffset): '\(Tar.shown(name))' continues a file from another volume of a multi-volume archive (pax \(key)); join the volumes with tar -M and pack them as one archive"
            )
        }

        var size = try number(header, Tar.size, "size", at: headerOffset)
        if let text = pax?.size {
            guard let value = Self.decimal(text), value <= UInt64(Int64.max) else {
                throw SnapError(.corrupt, "tar header at byte \(headerOffset): bad pax size \"\(Self.show(text))\"")
            }
            size = value
        }
        let seconds = try signedNumber(header, Tar.mtime, "mtime", at: headerOffset)
        var (mtime, overflow) = seconds.multipliedReportingOverflow(by: Tar.nanosecondsPerSecond)
        if let text = pax?.mtime {
            guard let value = Self.paxTime(text) else {
                throw SnapError(.corrupt, "tar header at byte \(headerOffset): bad pax mtime \"\(Self.show(text))\"")
            }
            (mtime, overflow) = (value, false)
        }
        guard !overflow else {
            throw SnapError(
                .corrupt,
                "tar header at byte \(headerOffset): the mtime of '\(Tar.shown(name))' (\(seconds) seconds from 1970) lies outside the years 1677 to 2262 that a snapshot's nanosecond times hold; set its time (touch) in an unpacked copy and pack the archive again"
            )
        }
        let mode = UInt32(truncatingIfNeeded: try signedNumber(header, Tar.mode, "mode", at: headerOffset)) & 0o7777

        // GNU tar takes a name ending in `/` for a folder whatever its type; Python's tarfile only
        // for the old v7 convention (type NUL, the slash in the header's own name field).
        let trailingSlash = name.count > 1 && name.last == UInt8(ascii: "/")
        while name.count > 1 && name.last == UInt8(ascii: "/") { name.removeLast() }
        guard !name.isEmpty else {
            throw SnapError(.corrupt, "tar header at byte \(headerOffset): the entry has an empty name")
        }

        let kind: TarEntryKind
        var isRegular = false
        switch type {
        case 0, UInt8(ascii: "0"), UInt8(ascii: "7"), UInt8(ascii: "S"):
            if trailingSlash && type == 0 && nameFromHeader && sparseRecords.isEmpty {
                kind = .directory
            } else {
                kind = .file
                isRegular = true
            }
        case UInt8(ascii: "1"): kind = .hardlink
        case UInt8(ascii: "2"): kind = .symlink
        case UInt8(ascii: "5"): kind = .directory
        default:
            // Devices, FIFOs, and types GNU tar extracts otherwise or not at all (D, M, N, unknown);
            // the caller decides. The content of all but devices and FIFOs is skipped, as GNU tar
            // skips it.
            kind = .other(Character(Unicode.Scalar(type)))
            isRegular = ![UInt8(ascii: "3"), UInt8(ascii: "4"), UInt8(ascii: "6")].contains(type)
        }
        let kindName: String =
            switch kind {
            case .file: "file"
            case .directory: "folder"
            case .symlink: "symlink"
            case .hardlink: "hard link"
            case .other: "special file"
            }
        if trailingSlash && kind != .directory {
            throw ambiguous("the \(kindName) '\(Tar.shown(name))/' (GNU tar makes a name ending in '/' a folder)")
        }
        if !isRegular && size > 0 {
            throw SnapError(
                .corrupt,
                "tar header at byte \(headerOffset): the \(kindName) '\(Tar.shown(name))' declares \(size) bytes of content, which a \(kindName) cannot have (GNU tar would read them as further entries): the archive is damaged or crafted; make it again from the original files"
            )
        }

        entryCount += 1
        currentName = String(decoding: name, as: UTF8.self)
        contentLeft = isRegular ? size : 0
        paddingLeft = isRegular ? Self.padding(size) : 0
        var expandedSize = contentLeft
        if type == UInt8(ascii: "S") || !sparseRecords.isEmpty {
            let map = try sparseMap(
                header, format: format, records: sparseRecords, paxSize: pax?.size != nil, at: headerOffset)
            sparse = SparseCursor(map)
            expandedSize = map.realSize
        }
        let isLink = kind == .symlink || kind == .hardlink
        return TarHeaderEntry(
            path: currentName, kind: kind, mode: mode, mtime: mtime, size: expandedSize,
            linkTarget: isLink ? String(decoding: link, as: UTF8.self) : nil, rawPath: name,
            rawLinkTarget: isLink ? link : nil, isSparse: sparse != nil)
    }

    /// The map of a sparse entry whose content (`contentLeft`) starts next; reads what of it lies
    /// after the header (old GNU extension blocks, the 1.0 map at the start of the content).
    private func sparseMap(
        _ header: [UInt8], format: Format, records: SparseRecords, paxSize: Bool, at headerOffset: UInt64
    ) throws -> SparseMap {
        func ambiguous(_ what: String) -> SnapError {
            Self.ambiguous(at: headerOffset, "the sparse file '\(currentName)' has \(what)")
        }
        // GNU tar's `size` record sets both sizes of a sparse file, in record order; tarfile
        // reads the next header's position from the expanded size.
        guard !paxSize else { throw ambiguous("a pax size record") }
        let map: SparseMap
        if header[Tar.typeflag] == UInt8(ascii: "S") {
            guard format == .gnu else { throw ambiguous("an old GNU sparse type in a header that is not GNU") }
            guard records.isEmpty else { throw ambiguous("both an old GNU sparse map and pax sparse records") }
            map = try oldSparseMap(header, at: headerOffset)
        } else {
            guard format == .ustar, [0, UInt8(ascii: "0"), UInt8(ascii: "7")].contains(header[Tar.typeflag]) else {
                throw ambiguous("pax sparse records on an entry that is not a POSIX regular file")
            }
            let recordMap: SparseMap?
            do {
                let realSize = try records.expandedSize().get()
                recordMap = try records.recordMap(realSize: realSize).get()
                map = try recordMap ?? SparseMap(pairs: try dataSparseMap(at: headerOffset), realSize: realSize)
            } catch let problem as SparseProblem {
                switch problem {
                case .ambiguous(let why): throw ambiguous(why)
                case .malformed(let why):
                    throw SnapError(
                        .corrupt, "tar header at byte \(headerOffset): the sparse file '\(currentName)' has \(why)")
                case .unsupported(let why):
                    throw SnapError(
                        .corrupt,
                        "tar header at byte \(headerOffset): the sparse file '\(currentName)' uses \(why); extract the archive with the GNU tar that made it and pack it again"
                    )
                }
            }
        }
        if let why = map.problem(storedBytes: contentLeft) {
            throw Self.ambiguous(at: headerOffset, "the sparse file '\(currentName)' \(why)")
        }
        return map
    }

    /// The old GNU map: four pairs in the header, 21 in each extension block that follows. GNU tar
    /// stops at the first pair with an empty size field and reads no extension block after it;
    /// tarfile reads every pair and every block, so the rest must be empty.
    private func oldSparseMap(_ header: [UInt8], at headerOffset: UInt64) throws -> SparseMap {
        let realSize = try number(header, Tar.oldSparseRealSize, "sparse real size", at: headerOffset)
        var regions: [SparseMap.Region] = []
        var finished = false
        func take(_ block: [UInt8], from start: Int, count: Int) throws {
            for index in 0..<count {
                let pair = start + index * 24
                if finished || block[pair + 12] == 0 {
                    guard block[pair..<(pair + 24)].allSatisfy({ $0 == 0 }) else {
                        throw Self.ambiguous(
                            at: headerOffset, "the sparse file '\(currentName)' has entries after the end of its map")
                    }
                    finished = true
                    continue
                }
                regions.append(
                    SparseMap.Region(
                        offset: try number(block, pair..<(pair + 12), "sparse offset", at: headerOffset),
                        length: try number(block, (pair + 12)..<(pair + 24), "sparse size", at: headerOffset)))
            }
        }
        try take(header, from: Tar.oldSparseMap, count: Tar.oldSparseEntries)
        var extended = header[Tar.oldSparseExtended] != 0
        var block = [UInt8](repeating: 0, count: Tar.blockSize)
        while extended {
            guard !finished else {
                throw Self.ambiguous(
                    at: headerOffset, "the sparse file '\(currentName)' continues its map after its end")
            }
            guard regions.count <= Self.maxSparseRegions else { throw tooManyRegions(at: headerOffset) }
            guard try readBlock(into: &block) else {
                throw SnapError(
                    .corrupt, "the tar archive is truncated: it ends inside the sparse map of \(currentName)")
            }
            try take(block, from: 0, count: Tar.extensionEntries)
            extended = block[Tar.extensionExtended] != 0
        }
        return SparseMap(regions: regions, realSize: realSize)
    }

    /// The numbers of a 1.0 map at the start of the content: the count, then offset and size
    /// pairs, each a decimal number ended by a newline, in whole blocks.
    private func dataSparseMap(at headerOffset: UInt64) throws -> [UInt64] {
        var numbers: [UInt64] = []
        var count: Int?
        var value: UInt64 = 0
        var digits = 0
        var block = [UInt8](repeating: 0, count: Tar.blockSize)
        while count.map({ numbers.count < 2 * $0 }) ?? true {
            guard contentLeft >= UInt64(Tar.blockSize) else {
                throw SparseProblem.malformed("a sparse map longer than its data")
            }
            try block.withUnsafeMutableBytes { raw in
                var filled = 0
                while filled < raw.count {
                    let n = try readRaw(into: UnsafeMutableRawBufferPointer(rebasing: raw[filled...]))
                    filled += n
                }
            }
            for byte in block {
                if let count, numbers.count == 2 * count { break }
                if byte == UInt8(ascii: "\n") && digits > 0 {
                    guard value <= UInt64(Int64.max) else {
                        throw SparseProblem.malformed(
                            "a number past 64 bits in the sparse map at the start of its data")
                    }
                    if count == nil {
                        guard value <= UInt64(Self.maxSparseRegions) else { throw tooManyRegions(at: headerOffset) }
                        count = Int(value)
                    } else {
                        numbers.append(value)
                    }
                    (value, digits) = (0, 0)
                } else if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte), digits < 19 {
                    value = value * 10 + UInt64(byte - UInt8(ascii: "0"))
                    digits += 1
                } else {
                    throw SparseProblem.malformed("a malformed sparse map at the start of its data")
                }
            }
        }
        return numbers
    }

    private func tooManyRegions(at headerOffset: UInt64) -> SnapError {
        SnapError(
            .corrupt,
            "tar header at byte \(headerOffset): the sparse file '\(currentName)' has a map of more than \(Self.maxSparseRegions) regions, more than snap holds in memory"
        )
    }

    /// The error for what GNU tar and Python's tarfile would extract differently (`what`).
    static func ambiguous(at headerOffset: UInt64, _ what: String) -> SnapError {
        SnapError(
            .corrupt,
            "tar header at byte \(headerOffset): \(what); tar programs extract this differently, so what the archive holds is in doubt: extract it with GNU tar and pack it again (tar -czf)"
        )
    }

    /// The body of an extended header (`x`, `g`, `L`, `K`), whose size is bounded.
    private func readExtended(_ header: [UInt8], at headerOffset: UInt64) throws -> [UInt8] {
        let size = try number(header, Tar.size, "size", at: headerOffset)
        guard size <= UInt64(Self.maxExtendedHeaderSize) else {
            throw SnapError(
                .corrupt,
                "tar header at byte \(headerOffset): extended header of \(size) bytes exceeds the \(Self.maxExtendedHeaderSize)-byte limit"
            )
        }
        let body = try readExact(Int(size), what: "extended header")
        try skip(UInt64(Self.padding(size)))
        return body
    }

    /// Reads content of the current entry; returns 0 at its end. A sparse file reads expanded:
    /// its holes as zeros.
    public func readContent(into destination: UnsafeMutableRawBufferPointer) throws -> Int {
        guard destination.count > 0 else { return 0 }
        guard var cursor = sparse else { return try readRaw(into: destination) }
        defer { sparse = cursor }
        switch cursor.next() {
        case .end:
            return 0
        case .data(let left):
            let want = Int(min(UInt64(destination.count), left))
            let n = try readRaw(into: UnsafeMutableRawBufferPointer(rebasing: destination[0..<want]))
            guard n > 0 else {
                throw SnapError(
                    .corrupt, "the tar archive is damaged: \(currentName) holds less data than its sparse map")
            }
            cursor.position += UInt64(n)
            return n
        case .hole(let left):
            let n = Int(min(UInt64(destination.count), left))
            destination.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: n)
            cursor.position += UInt64(n)
            return n
        }
    }

    /// Reads the current entry's bytes as the archive stores them; returns 0 at their end.
    private func readRaw(into destination: UnsafeMutableRawBufferPointer) throws -> Int {
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

    /// A numeric field that cannot be negative (a size, an offset).
    private func number(_ header: [UInt8], _ range: Range<Int>, _ name: String, at headerOffset: UInt64) throws
        -> UInt64
    {
        let value = try signedNumber(header, range, name, at: headerOffset)
        guard value >= 0 else { throw badNumber(name, header[range], headerOffset) }
        return UInt64(value)
    }

    /// A numeric field as GNU tar and Python's tarfile both read it (see `numberValue`).
    private func signedNumber(_ header: [UInt8], _ range: Range<Int>, _ name: String, at headerOffset: UInt64) throws
        -> Int64
    {
        guard let value = Self.numberValue(header[range]) else { throw badNumber(name, header[range], headerOffset) }
        return value
    }

    private func badNumber(_ name: String, _ bytes: ArraySlice<UInt8>, _ headerOffset: UInt64) -> SnapError {
        SnapError(
            .corrupt, "tar header at byte \(headerOffset) is damaged: bad \(name) field \"\(Self.show(Array(bytes)))\"")
    }

    /// A numeric header field: octal digits after optional spaces, ended by NULs or spaces, or
    /// GNU's base-256 (two's complement after a lead byte of 0x80, or 0xFF for a negative number).
    /// An all-NUL field is 0. Whatever else either GNU tar or Python's tarfile would read as
    /// something else, or refuse, is nil: a field of spaces only (GNU tar refuses it, tarfile
    /// reads 0), a NUL before the digits (GNU tar skips it, tarfile reads 0), another lead byte
    /// with the high bit, a value beyond 64 bits.
    static func numberValue(_ bytes: ArraySlice<UInt8>) -> Int64? {
        guard let first = bytes.first else { return 0 }
        if first == 0x80 || first == 0xFF {
            var value: Int64 = first == 0xFF ? -1 : 0
            for byte in bytes.dropFirst() {
                guard value >= Int64.min >> 8 && value <= Int64.max >> 8 else { return nil }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        if first == 0 { return bytes.allSatisfy { $0 == 0 } ? 0 : nil }
        var index = bytes.startIndex
        while index < bytes.endIndex && bytes[index] == 0x20 { index += 1 }
        var value: Int64 = 0
        var digits = 0
        while index < bytes.endIndex, (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(bytes[index]) {
            guard value <= Int64.max >> 3 else { return nil }
            value = value << 3 | Int64(bytes[index] - UInt8(ascii: "0"))
            digits += 1
            index += 1
        }
        guard digits > 0, bytes[index...].allSatisfy({ $0 == 0x20 || $0 == 0 }) else { return nil }
        return value
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

    /// A pax time `[-]SECONDS[.FRACTION]` in nanoseconds. Fraction digits past 9 are dropped, a
    /// negative time rounding towards minus infinity, as GNU tar rounds it.
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
            if negative && fraction.dropFirst(9).contains(where: { $0 != UInt8(ascii: "0") }) { nanos += 1 }
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
