import SnapCore

/// Writes a POSIX (pax) tar stream to a sink, one entry at a time, with bounded memory.
///
/// Every entry gets a ustar header; a pax extended header (`x`) goes before it when a field does
/// not fit: a path or link target that is too long or not ASCII, a size of 8 GiB or more, or an
/// mtime with a sub-second part or outside the octal range. Owners are always root (uid/gid 0),
/// as `snap export` archives are meant to be restored by whoever extracts them.
///
/// Not thread-safe: call it from one thread.
public final class TarWriter {
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    /// Content bytes still owed by the open file, nil when no file is open.
    private var remaining: UInt64?
    private var currentSize: UInt64 = 0
    private var currentPath = ""
    private var finished = false

    /// The number of bytes handed to the sink so far.
    public private(set) var bytesWritten: UInt64 = 0

    /// `sink` receives the archive bytes in order; an error it throws is passed on to the caller.
    public init(sink: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.sink = sink
    }

    /// A directory entry; the stored name gets a trailing `/` if `path` lacks one.
    public func appendDirectory(path: String, mode: UInt32, mtime: Int64) throws {
        try checkReady(path)
        let name = path.hasSuffix("/") ? path : path + "/"
        try writeHeader(path: name, type: UInt8(ascii: "5"), mode: mode, mtime: mtime, size: 0, linkTarget: nil)
    }

    /// A symbolic link pointing at `target` (stored as given, never followed).
    public func appendSymlink(path: String, target: String, mode: UInt32 = 0o777, mtime: Int64) throws {
        try checkReady(path)
        guard !target.utf8.contains(0) else {
            throw SnapError(.invalidInput, "cannot add \(path) to the tar: its link target contains a NUL byte")
        }
        try writeHeader(path: path, type: UInt8(ascii: "2"), mode: mode, mtime: mtime, size: 0, linkTarget: target)
    }

    /// Starts a regular file of exactly `size` bytes; follow with `writeContent` and `endFile`.
    public func beginFile(path: String, mode: UInt32, mtime: Int64, size: UInt64) throws {
        try checkReady(path)
        guard size <= UInt64(Int64.max) else {
            throw SnapError(.invalidInput, "cannot add \(path) to the tar: size \(size) is too large")
        }
        try writeHeader(path: path, type: UInt8(ascii: "0"), mode: mode, mtime: mtime, size: size, linkTarget: nil)
        remaining = size
        currentSize = size
        currentPath = path
    }

    /// Content of the open file; throws if it goes past the size given to `beginFile`.
    public func writeContent(_ bytes: UnsafeRawBufferPointer) throws {
        guard let left = remaining else {
            throw SnapError(.invalidInput, "tar: file content written with no file open")
        }
        guard UInt64(bytes.count) <= left else {
            throw SnapError(
                .invalidInput,
                "tar: \(currentPath) has more content than the \(currentSize) bytes its header declares (it changed while being read?)"
            )
        }
        guard !bytes.isEmpty else { return }
        remaining = left - UInt64(bytes.count)
        try emit(bytes)
    }

    /// Closes the open file, padding its content to a whole block; throws if content is missing.
    public func endFile() throws {
        guard let left = remaining else { throw SnapError(.invalidInput, "tar: endFile with no file open") }
        guard left == 0 else {
            throw SnapError(
                .invalidInput,
                "tar: \(currentPath) ended \(left) bytes short of the \(currentSize) bytes its header declares (it changed while being read?)"
            )
        }
        remaining = nil
        try pad()
    }

    /// A whole regular file from memory: `beginFile`, `writeContent`, `endFile`.
    public func appendFile(path: String, mode: UInt32, mtime: Int64, contents: UnsafeRawBufferPointer) throws {
        try beginFile(path: path, mode: mode, mtime: mtime, size: UInt64(contents.count))
        try writeContent(contents)
        try endFile()
    }

    /// Ends the archive: two zero blocks, then zeros up to a multiple of 10240 bytes like GNU tar.
    public func finish() throws {
        if remaining != nil {
            throw SnapError(.invalidInput, "tar: finish while \(currentPath) is still open; call endFile first")
        }
        guard !finished else { return }
        finished = true
        var total = bytesWritten + UInt64(2 * Tar.blockSize)
        total += (UInt64(Tar.recordSize) - total % UInt64(Tar.recordSize)) % UInt64(Tar.recordSize)
        try emitZeros(Int(total - bytesWritten))
    }

    // MARK: - Headers

    private func checkReady(_ path: String) throws {
        if finished { throw SnapError(.invalidInput, "tar: entry \(path) added after finish") }
        if remaining != nil {
            throw SnapError(.invalidInput, "tar: entry \(path) added while \(currentPath) is still open")
        }
        guard !path.isEmpty, path != "/" else { throw SnapError(.invalidInput, "tar: empty entry name") }
        guard !path.utf8.contains(0) else {
            throw SnapError(.invalidInput, "cannot add \(path) to the tar: its name contains a NUL byte")
        }
    }

    private func writeHeader(
        path: String, type: UInt8, mode: UInt32, mtime: Int64, size: UInt64, linkTarget: String?
    ) throws {
        var records: [UInt8] = []
        let pathBytes = Array(path.utf8)
        var nameField: (prefix: [UInt8], name: [UInt8])
        if let split = Self.ustarSplit(pathBytes) {
            nameField = split
        } else {
            records += Self.paxRecord("path", pathBytes)
            nameField = Self.fallbackName(pathBytes)
        }
        var linkField: [UInt8] = []
        if let linkTarget {
            let bytes = Array(linkTarget.utf8)
            if bytes.count <= Tar.linkname.count && bytes.allSatisfy({ $0 < 0x80 }) {
                linkField = bytes
            } else {
                records += Self.paxRecord("linkpath", bytes)
                linkField = Array(Self.asciiOnly(bytes).prefix(Tar.linkname.count))
            }
        }
        var sizeField = size
        if size > Tar.maxOctal11 {
            records += Self.paxRecord("size", Array(String(size).utf8))
            sizeField = 0
        }
        let (seconds, nanos) = Tar.split(nanoseconds: mtime)
        let mtimeFits = seconds >= 0 && UInt64(seconds) <= Tar.maxOctal11
        if nanos != 0 || !mtimeFits {
            records += Self.paxRecord("mtime", Array(Self.paxTime(mtime).utf8))
        }
        let mtimeField = mtimeFits ? UInt64(seconds) : (seconds < 0 ? 0 : Tar.maxOctal11)

        if !records.isEmpty {
            let paxHeader = Self.header(
                prefix: [], name: Self.paxHeaderName(pathBytes), type: UInt8(ascii: "x"), mode: 0o644,
                mtime: mtimeField, size: UInt64(records.count), link: [])
            try paxHeader.withUnsafeBytes { try emit($0) }
            try records.withUnsafeBytes { try emit($0) }
            try pad()
        }
        let header = Self.header(
            prefix: nameField.prefix, name: nameField.name, type: type, mode: mode & 0o7777, mtime: mtimeField,
            size: sizeField, link: linkField)
        try header.withUnsafeBytes { try emit($0) }
    }

    /// The 512-byte ustar header.
    static func header(
        prefix: [UInt8], name: [UInt8], type: UInt8, mode: UInt32, mtime: UInt64, size: UInt64, link: [UInt8]
    ) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: Tar.blockSize)
        func put(_ bytes: [UInt8], _ field: Range<Int>) {
            for (offset, byte) in bytes.prefix(field.count).enumerated() { block[field.lowerBound + offset] = byte }
        }
        func octal(_ value: UInt64, _ field: Range<Int>) {
            // width-1 zero-padded digits and a NUL, as GNU tar writes them.
            var digits = Array(String(value, radix: 8).utf8)
            digits.insert(contentsOf: repeatElement(UInt8(ascii: "0"), count: field.count - 1 - digits.count), at: 0)
            put(digits, field)
        }
        put(name, Tar.name)
        octal(UInt64(mode), Tar.mode)
        octal(0, Tar.uid)
        octal(0, Tar.gid)
        octal(size, Tar.size)
        octal(mtime, Tar.mtime)
        block[Tar.typeflag] = type
        put(link, Tar.linkname)
        put(Array("ustar\0".utf8), Tar.magic)
        put(Array("00".utf8), Tar.version)
        put(Array("root".utf8), Tar.uname)
        put(Array("root".utf8), Tar.gname)
        octal(0, Tar.devmajor)
        octal(0, Tar.devminor)
        put(prefix, Tar.prefix)
        let sum = block.withUnsafeBytes { Tar.checksums($0).unsigned }
        // Six digits, NUL, space: the traditional checksum layout.
        var digits = Array(String(sum, radix: 8).utf8)
        digits.insert(contentsOf: repeatElement(UInt8(ascii: "0"), count: 6 - digits.count), at: 0)
        put(digits + [0, 0x20], Tar.checksum)
        return block
    }

    /// `path` as ustar `prefix` + `/` + `name`, or nil when it needs a pax `path` record.
    static func ustarSplit(_ path: [UInt8]) -> (prefix: [UInt8], name: [UInt8])? {
        guard path.allSatisfy({ $0 < 0x80 }) else { return nil }
        if path.count <= Tar.name.count { return ([], path) }
        guard path.count <= Tar.prefix.count + 1 + Tar.name.count else { return nil }
        // The first `/` that leaves a name of at most 100 bytes; the name must not be empty and
        // must not be just the directory `/`.
        let slash = UInt8(ascii: "/")
        let lowest = max(1, path.count - 1 - Tar.name.count)
        guard lowest <= Tar.prefix.count else { return nil }
        for index in lowest...min(Tar.prefix.count, path.count - 1) where path[index] == slash {
            let name = Array(path[(index + 1)...])
            if name.isEmpty || name == [slash] { continue }
            return (Array(path[..<index]), name)
        }
        return nil
    }

    /// What the ustar fields hold when a pax `path` carries the real name: an ASCII, truncated form.
    static func fallbackName(_ path: [UInt8]) -> (prefix: [UInt8], name: [UInt8]) {
        let ascii = asciiOnly(path)
        if let split = ustarSplit(ascii) { return split }
        if ascii.last == UInt8(ascii: "/") {
            return ([], Array(ascii.prefix(Tar.name.count - 1)) + [UInt8(ascii: "/")])
        }
        return ([], Array(ascii.prefix(Tar.name.count)))
    }

    static func asciiOnly(_ bytes: [UInt8]) -> [UInt8] {
        bytes.map { $0 < 0x80 ? $0 : UInt8(ascii: "_") }
    }

    /// `PaxHeaders/<basename>`, with the base name reduced to a short, safe ASCII form.
    static func paxHeaderName(_ path: [UInt8]) -> [UInt8] {
        var base = path
        while base.count > 1 && base.last == UInt8(ascii: "/") { base.removeLast() }
        if let slash = base.lastIndex(of: UInt8(ascii: "/")) { base = Array(base[(slash + 1)...]) }
        let safe = base.prefix(64).map { byte -> UInt8 in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
                return byte
            default:
                return UInt8(ascii: "_")
            }
        }
        return Array("PaxHeaders/".utf8) + (safe.isEmpty ? Array("entry".utf8) : safe)
    }

    /// One `"%d %s=%s\n"` record, where the leading number counts the whole record, itself included.
    static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let body = 1 + key.utf8.count + 1 + value.count + 1  // " key=value\n"
        var length = body + String(body).utf8.count
        if String(length).utf8.count != String(body).utf8.count { length = body + String(length).utf8.count }
        return Array("\(length) \(key)=".utf8) + value + [UInt8(ascii: "\n")]
    }

    /// A pax time: whole seconds, and nine fraction digits when there is a sub-second part.
    static func paxTime(_ nanoseconds: Int64) -> String {
        let negative = nanoseconds < 0
        let magnitude = nanoseconds.magnitude
        let seconds = magnitude / 1_000_000_000
        let fraction = magnitude % 1_000_000_000
        var text = (negative ? "-" : "") + String(seconds)
        if fraction != 0 {
            let digits = String(fraction)
            text += "." + String(repeating: "0", count: 9 - digits.count) + digits
        }
        return text
    }

    // MARK: - Output

    private func emit(_ bytes: UnsafeRawBufferPointer) throws {
        try sink(bytes)
        bytesWritten += UInt64(bytes.count)
    }

    /// Zeros up to the next block boundary.
    private func pad() throws {
        let partial = Int(bytesWritten % UInt64(Tar.blockSize))
        if partial != 0 { try emitZeros(Tar.blockSize - partial) }
    }

    private static let zeros = [UInt8](repeating: 0, count: Tar.recordSize)

    private func emitZeros(_ count: Int) throws {
        var left = count
        while left > 0 {
            let n = min(left, Self.zeros.count)
            try Self.zeros.withUnsafeBytes { try emit(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= n
        }
    }
}
