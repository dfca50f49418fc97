// The POSIX tar layout shared by the writer and the reader: a 512-byte header per entry, ustar
// fields at fixed offsets, content padded to 512 bytes, and pax extended headers for what the
// fixed fields cannot hold.

/// What a tar entry is.
public enum TarEntryKind: Hashable, Sendable {
    case file
    case directory
    case symlink
    case hardlink
    /// Anything else, by its typeflag: `"3"` character device, `"4"` block device, `"6"` fifo, ...
    case other(Character)
}

/// One entry of a tar archive, as the reader reports it after applying pax and GNU extensions.
public struct TarHeaderEntry: Hashable, Sendable {
    /// The entry's name, without the trailing `/` of a directory. Bytes that are not valid UTF-8
    /// are replaced by U+FFFD; `rawPath` keeps them.
    public var path: String
    public var kind: TarEntryKind
    /// Permission bits, including setuid, setgid and sticky.
    public var mode: UInt32
    /// Modification time in nanoseconds since the epoch (exact when a pax `mtime` is present).
    public var mtime: Int64
    /// The number of content bytes that follow: 0 for directories, links and devices.
    public var size: UInt64
    /// The target of a symlink or hard link, nil for other kinds. Bytes that are not valid UTF-8
    /// are replaced by U+FFFD; `rawLinkTarget` keeps them.
    public var linkTarget: String?
    /// The name exactly as stored (before UTF-8 decoding, without the directory `/`).
    public var rawPath: [UInt8]
    /// The link target exactly as stored, nil for entries that are not links.
    public var rawLinkTarget: [UInt8]?
    /// Whether the file was stored sparse (GNU formats 0.0, 0.1, 1.0 or old GNU type `S`): its
    /// content reads back expanded, holes as zeros, as GNU tar extracts it; `size` is the
    /// expanded size.
    public var isSparse: Bool

    public init(
        path: String, kind: TarEntryKind, mode: UInt32, mtime: Int64, size: UInt64 = 0, linkTarget: String? = nil,
        rawPath: [UInt8]? = nil, rawLinkTarget: [UInt8]? = nil, isSparse: Bool = false
    ) {
        self.path = path
        self.kind = kind
        self.mode = mode
        self.mtime = mtime
        self.size = size
        self.linkTarget = linkTarget
        self.rawPath = rawPath ?? Array(path.utf8)
        self.rawLinkTarget = rawLinkTarget ?? linkTarget.map { Array($0.utf8) }
        self.isSparse = isSparse
    }
}

/// Offsets and sizes of the ustar header fields, and the helpers both directions need.
enum Tar {
    static let blockSize = 512
    /// GNU tar pads the archive to a multiple of 20 blocks.
    static let recordSize = 10_240

    static let name = 0..<100
    static let mode = 100..<108
    static let uid = 108..<116
    static let gid = 116..<124
    static let size = 124..<136
    static let mtime = 136..<148
    static let checksum = 148..<156
    static let typeflag = 156
    static let linkname = 157..<257
    static let magic = 257..<263
    static let version = 263..<265
    static let uname = 265..<297
    static let gname = 297..<329
    static let devmajor = 329..<337
    static let devminor = 337..<345
    static let prefix = 345..<500

    // The old GNU header (magic `ustar  `) keeps a sparse map where ustar has its prefix: four
    // (offset, size) pairs of two 12-byte numbers each, a flag saying that extension blocks of
    // 21 more pairs follow (each block ends in such a flag too), and the expanded size.
    static let oldSparseMap = 386
    static let oldSparseEntries = 4
    static let oldSparseExtended = 482
    static let oldSparseRealSize = 483..<495
    static let extensionEntries = 21
    static let extensionExtended = 504

    /// The largest value an 11-digit octal field (size, mtime) holds: 8 GiB - 1.
    static let maxOctal11: UInt64 = (1 << 33) - 1

    static let nanosecondsPerSecond: Int64 = 1_000_000_000

    /// The header checksum: the sum of all bytes with the checksum field counted as spaces.
    static func checksums(_ header: UnsafeRawBufferPointer) -> (unsigned: Int64, signed: Int64) {
        var unsigned: Int64 = 0
        var signed: Int64 = 0
        for index in 0..<blockSize {
            let byte = checksum.contains(index) ? 0x20 : header[index]
            unsigned += Int64(byte)
            signed += Int64(Int8(bitPattern: byte))
        }
        return (unsigned, signed)
    }

    /// A name for a message on one line: valid UTF-8 as it is; control characters and bytes that
    /// are not UTF-8 as `\xNN`.
    static func shown(_ bytes: [UInt8]) -> String {
        var text = ""
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = bytes.makeIterator()
        var index = 0
        func escape(_ byte: UInt8) {
            let hex = String(byte, radix: 16, uppercase: true)
            text += "\\x" + (hex.count < 2 ? "0" : "") + hex
        }
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid(let encoded):
                let scalar = Unicode.UTF8.decode(encoded)
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    escape(UInt8(scalar.value))
                } else {
                    text.unicodeScalars.append(scalar)
                }
                index += encoded.count
            case .error(let length):
                for byte in bytes[index..<(index + length)] { escape(byte) }
                index += length
            case .emptyInput:
                return text
            }
        }
    }

    /// Floor division of a time in nanoseconds into whole seconds and a non-negative remainder.
    static func split(nanoseconds: Int64) -> (seconds: Int64, nanos: Int64) {
        let (q, r) = nanoseconds.quotientAndRemainder(dividingBy: nanosecondsPerSecond)
        return r < 0 ? (q - 1, r + nanosecondsPerSecond) : (q, r)
    }
}
