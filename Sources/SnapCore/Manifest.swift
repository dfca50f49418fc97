import Foundation

/// One line of a snapshot's manifest: a folder, file or symlink of the storage tree, or the
/// database dump stream.
public struct ManifestEntry: Sendable, Equatable {
    public enum Kind: String, Sendable, Codable {
        case directory = "dir"
        case file
        case symlink
        /// The pg_dump custom-format stream; `path` is `database.dump`.
        case database
    }

    public var kind: Kind
    /// Relative to the storage folder, `/`-separated; `.` is the storage folder itself.
    public var path: String
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 07777`).
    public var mode: UInt32
    /// Modification time, nanoseconds since the Unix epoch.
    public var mtime: Int64
    public var size: UInt64
    /// The link target, for symlinks.
    public var target: String?
    /// The content, for files and the database stream.
    public var chunks: [ObjectID]

    public init(
        kind: Kind, path: String, mode: UInt32 = 0, mtime: Int64 = 0, size: UInt64 = 0,
        target: String? = nil, chunks: [ObjectID] = []
    ) {
        self.kind = kind
        self.path = path
        self.mode = mode
        self.mtime = mtime
        self.size = size
        self.target = target
        self.chunks = chunks
    }

    /// The entry as one JSON line, byte-for-byte deterministic (see docs/FORMAT.md):
    /// keys in the order type, path, mode, mtime, size, target, chunks; `target` only for symlinks,
    /// `chunks` only for files and the database; strings escaped minimally.
    public func encodedLine() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(96 + path.utf8.count + chunks.count * 67)
        out.append(contentsOf: #"{"type":"#.utf8)
        appendJSONString(kind.rawValue, to: &out)
        out.append(contentsOf: #","path":"#.utf8)
        appendJSONString(path, to: &out)
        out.append(contentsOf: #","mode":\#(mode),"mtime":\#(mtime),"size":\#(size)"#.utf8)
        if kind == .symlink {
            out.append(contentsOf: #","target":"#.utf8)
            appendJSONString(target ?? "", to: &out)
        }
        if kind == .file || kind == .database {
            out.append(contentsOf: #","chunks":["#.utf8)
            for (index, chunk) in chunks.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                out.append(UInt8(ascii: "\""))
                out.append(contentsOf: chunk.hex.utf8)
                out.append(UInt8(ascii: "\""))
            }
            out.append(UInt8(ascii: "]"))
        }
        out.append(contentsOf: "}\n".utf8)
        return out
    }

    private struct Line: Decodable {
        var type: Kind
        var path: String
        var mode: UInt32
        var mtime: Int64
        var size: UInt64
        var target: String?
        var chunks: [ObjectID]?
    }

    static func decode(line: some Collection<UInt8>) throws -> ManifestEntry {
        let decoded: Line
        do {
            decoded = try JSONDecoder().decode(Line.self, from: Data(line))
        } catch {
            throw SnapError(.corrupt, "a manifest line does not parse")
        }
        return ManifestEntry(
            kind: decoded.type, path: decoded.path, mode: decoded.mode, mtime: decoded.mtime,
            size: decoded.size, target: decoded.target, chunks: decoded.chunks ?? [])
    }
}

/// JSON string with only `"`, `\` and control characters escaped; other text stays raw UTF-8.
/// Runs of plain bytes are copied whole: a deep tree's paths are tens of kilobytes each.
func appendJSONString(_ text: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    var text = text
    text.withUTF8 { bytes in
        var plain = 0
        for index in bytes.indices {
            let byte = bytes[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[plain..<index]))
            plain = index + 1
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): out.append(contentsOf: #"\\"#.utf8)
            case 0x0A: out.append(contentsOf: #"\n"#.utf8)
            case 0x0D: out.append(contentsOf: #"\r"#.utf8)
            case 0x09: out.append(contentsOf: #"\t"#.utf8)
            default:
                out.append(contentsOf: #"\u00"#.utf8)
                out.append(contentsOf: hexString([byte]).utf8)
            }
        }
        out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[plain...]))
    }
    out.append(UInt8(ascii: "\""))
}

/// Streams manifest lines through the chunker into the store.
final class ManifestWriter {
    private let chunker: StreamChunker
    private let objects: ObjectWriter
    private var chunks: [ObjectID] = []

    init(parameters: ChunkerParameters, objects: ObjectWriter) {
        chunker = StreamChunker(parameters)
        self.objects = objects
    }

    func append(_ entry: ManifestEntry) throws {
        let line = entry.encodedLine()
        try line.withUnsafeBytes { bytes in
            try chunker.append(bytes) { chunks.append(try objects.write($0)) }
        }
    }

    func finish() throws -> StreamReference {
        try chunker.finish { chunks.append(try objects.write($0)) }
        return StreamReference(size: chunker.totalBytes, chunks: chunks)
    }
}

/// Reads a manifest back one entry at a time, holding one chunk in memory.
public struct ManifestReader {
    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    public func forEachEntry(_ manifest: StreamReference, _ body: (ManifestEntry) throws -> Void) throws {
        let decompressor = ZstdDecompressor()
        var pending: [UInt8] = []
        var total: UInt64 = 0
        for id in manifest.chunks {
            let content = try repository.loadObject(id, decompressor: decompressor)
            total += UInt64(content.count)
            var lineStart = content.startIndex
            // memchr: a deep tree's lines are tens of kilobytes (and tests run unoptimized code,
            // where a generic search per byte is slow).
            while let newline = Self.newline(in: content, from: lineStart) {
                if pending.isEmpty {
                    try body(try ManifestEntry.decode(line: content[lineStart..<newline]))
                } else {
                    pending.append(contentsOf: content[lineStart..<newline])
                    try body(try ManifestEntry.decode(line: pending))
                    pending.removeAll(keepingCapacity: true)
                }
                lineStart = newline + 1
            }
            pending.append(contentsOf: content[lineStart...])
        }
        guard pending.isEmpty else { throw SnapError(.corrupt, "the manifest ends in the middle of a line") }
        guard total == manifest.size else {
            throw SnapError(.corrupt, "the manifest holds \(total) bytes, its record says \(manifest.size)")
        }
    }

    private static func newline(in content: [UInt8], from start: Int) -> Int? {
        content.withUnsafeBytes { bytes in
            guard start < bytes.count, let found = memchr(bytes.baseAddress! + start, 0x0A, bytes.count - start)
            else { return nil }
            return bytes.baseAddress!.distance(to: UnsafeRawPointer(found))
        }
    }
}
