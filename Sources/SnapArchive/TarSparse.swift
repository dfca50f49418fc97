import SnapCore

/// Where the data of a sparse file lies, and how large the file is once expanded.
///
/// GNU tar stores a file with holes as its data regions only, and a map of them, in one of four
/// layouts:
///
/// - old GNU (type `S`, magic `ustar  `): up to four (offset, size) pairs in the header, more in
///   extension blocks after it, the expanded size in the header;
/// - pax 0.0: `GNU.sparse.size` (expanded size), `GNU.sparse.numblocks`, then that many
///   `GNU.sparse.offset`/`GNU.sparse.numbytes` record pairs;
/// - pax 0.1: the same, with the pairs as one `GNU.sparse.map` of comma-separated numbers, and
///   the real name in `GNU.sparse.name`;
/// - pax 1.0: `GNU.sparse.major=1`, `GNU.sparse.minor=0`, `GNU.sparse.name`,
///   `GNU.sparse.realsize`; the map is at the start of the entry's data, as decimal numbers
///   each ended by a newline (the count, then the pairs), padded to a whole block.
///
/// GNU tar extracts such a file by writing each region at its offset (each region's data starts
/// on a 512-byte block in the archive) and leaving the rest as holes. Python's tarfile reads the
/// regions back to back and truncates the file to the expanded size. The two agree only on maps
/// as GNU tar writes them; `check` refuses every other map rather than guess.
struct SparseMap {
    struct Region {
        var offset: UInt64
        var length: UInt64
        var end: UInt64 { offset + length }
    }

    var regions: [Region]
    var realSize: UInt64

    /// Why GNU tar and Python's tarfile would extract this map differently, or nil when they agree:
    /// at least one region, in order and not overlapping, within the file, the last ending where
    /// the file ends, every region before the last one with data a whole number of blocks (GNU tar
    /// starts each region on a block), and the data sizes adding up to what the entry stores.
    func problem(storedBytes: UInt64) -> String? {
        guard !regions.isEmpty else { return "has a sparse map with no region" }
        var previousEnd: UInt64 = 0
        var total: UInt64 = 0
        let lastWithData = regions.lastIndex { $0.length > 0 }
        for (index, region) in regions.enumerated() {
            guard region.offset >= previousEnd else {
                return "has a sparse map with regions out of order or overlapping (at offset \(region.offset))"
            }
            let (end, overflow) = region.offset.addingReportingOverflow(region.length)
            guard !overflow, end <= realSize else {
                return "has a sparse map with a region past the file's size of \(realSize) bytes"
            }
            if let lastWithData, index < lastWithData, region.length % UInt64(Tar.blockSize) != 0 {
                return "has a sparse map with a region of \(region.length) bytes, not whole blocks, before its last one"
            }
            previousEnd = end
            total += region.length
        }
        guard previousEnd == realSize else {
            return "has a sparse map that ends at byte \(previousEnd), before the file's size of \(realSize) bytes"
        }
        guard total == storedBytes else {
            return "has a sparse map of \(total) bytes of data, but the entry stores \(storedBytes)"
        }
        return nil
    }

    /// The regions from alternating offsets and lengths.
    init(pairs numbers: [UInt64], realSize: UInt64) {
        regions = stride(from: 0, to: numbers.count - 1, by: 2).map {
            Region(offset: numbers[$0], length: numbers[$0 + 1])
        }
        self.realSize = realSize
    }

    init(regions: [Region], realSize: UInt64) {
        self.regions = regions
        self.realSize = realSize
    }
}

/// The read position in a sparse file as it expands.
struct SparseCursor {
    let map: SparseMap
    var index = 0
    var position: UInt64 = 0

    init(_ map: SparseMap) { self.map = map }

    enum Step {
        /// The next bytes (at most this many) come from the archive.
        case data(UInt64)
        /// The next bytes (this many) are a hole: zeros.
        case hole(UInt64)
        case end
    }

    /// What comes next, skipping regions already read (and empty ones).
    mutating func next() -> Step {
        while index < map.regions.count, position >= map.regions[index].end { index += 1 }
        guard position < map.realSize else { return .end }
        if index < map.regions.count {
            let region = map.regions[index]
            if position >= region.offset { return .data(region.end - position) }
            return .hole(region.offset - position)
        }
        return .hole(map.realSize - position)
    }
}

extension SparseRecords {
    /// A decimal number as GNU tar's sparse records hold it: digits only, within `off_t`.
    static func number(_ text: some Collection<UInt8>) -> UInt64? {
        guard let value = TarReader.decimal(Array(text)), value <= UInt64(Int64.max) else { return nil }
        return value
    }

    /// The expanded size (`GNU.sparse.realsize`, or `GNU.sparse.size` of the 0.x formats; both
    /// set the same value in GNU tar and Python's tarfile, so they must agree when both appear).
    func expandedSize() -> Result<UInt64, SparseProblem> {
        let values = [realSize, size].compactMap { $0 }
        guard let first = values.first else { return .failure(.ambiguous("sparse records without the file's size")) }
        guard let value = Self.number(first) else {
            return .failure(.malformed("bad sparse size \"\(TarReader.show(first))\""))
        }
        guard values.allSatisfy({ Self.number($0) == value }) else {
            return .failure(.ambiguous("GNU.sparse.realsize and GNU.sparse.size disagree"))
        }
        return .success(value)
    }

    /// The map of format 0.0 (record pairs) or 0.1 (`GNU.sparse.map`); nil for format 1.0, whose
    /// map is in the data.
    func recordMap(realSize: UInt64) -> Result<SparseMap?, SparseProblem> {
        if major != nil || minor != nil {
            guard major == Array("1".utf8), minor == Array("0".utf8) else {
                let version = "\(TarReader.show(major ?? [])).\(TarReader.show(minor ?? []))"
                return .failure(.unsupported("GNU sparse format \(version), which snap does not know"))
            }
            guard map == nil, pairs.isEmpty, numberOfBlocks == nil else {
                return .failure(.ambiguous("records of sparse format 1.0 and of 0.x together"))
            }
            return .success(nil)
        }
        guard let countText = numberOfBlocks else {
            return .failure(.ambiguous("GNU sparse records without GNU.sparse.numblocks"))
        }
        guard let count = Self.number(countText), count <= UInt64(TarReader.maxSparseRegions) else {
            return .failure(.malformed("bad GNU.sparse.numblocks \"\(TarReader.show(countText))\""))
        }
        var numbers: [UInt64] = []
        if let map {
            guard pairs.isEmpty else { return .failure(.ambiguous("records of sparse format 0.0 and 0.1 together")) }
            for field in map.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                guard let value = Self.number(field) else {
                    return .failure(.malformed("bad GNU.sparse.map \"\(TarReader.show(map))\""))
                }
                numbers.append(value)
            }
        } else {
            for (index, pair) in pairs.enumerated() {
                guard pair.isOffset == (index % 2 == 0) else {
                    return .failure(.ambiguous("GNU.sparse.offset and GNU.sparse.numbytes records out of turn"))
                }
                guard let value = Self.number(pair.value) else {
                    return .failure(.malformed("bad sparse record \"\(TarReader.show(pair.value))\""))
                }
                numbers.append(value)
            }
        }
        guard numbers.count == 2 * Int(count) else {
            return .failure(.ambiguous("a sparse map of \(numbers.count) numbers for \(count) regions"))
        }
        return .success(SparseMap(pairs: numbers, realSize: realSize))
    }
}

/// Why a sparse entry is refused.
enum SparseProblem: Error {
    /// GNU tar and Python's tarfile would read it differently.
    case ambiguous(String)
    /// Neither could read it.
    case malformed(String)
    /// A format GNU tar (of this time) does not write.
    case unsupported(String)
}
