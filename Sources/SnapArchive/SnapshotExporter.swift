import SnapCore

#if canImport(Glibc)
    import Glibc
#endif

/// Writes a snapshot as the classic `backup_YYYYMMDD_HHMMSS.tar.gz`: `database.dump` (the exact
/// pg_dump bytes) and `storage/...` (folders, files and symlinks with their modes and mtimes).
/// Files lose their setuid and setgid bits, as in a restore: the archive names no owner but root,
/// and `tar -x` run as root would make them root programs.
///
/// Everything streams: chunks are read one at a time, the tar stream is cut into blocks that
/// are deflated on every core, and the gzip stream goes to `sink` in order.
public struct SnapshotExporter {
    public struct Statistics: Sendable {
        public var entries = 0
        public var bytesIn: UInt64 = 0
        public var bytesOut: UInt64 = 0
    }

    let repository: Repository
    let snapshot: Snapshot

    public init(repository: Repository, snapshot: Snapshot) {
        self.repository = repository
        self.snapshot = snapshot
    }

    /// `backup_YYYYMMDD_HHMMSS.tar.gz` from the snapshot's time in UTC.
    public static func fileName(for snapshot: Snapshot) -> String {
        "backup_\(snapshot.record.time.compactUTC).tar.gz"
    }

    public func write(to sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws -> Statistics {
        let gzip = ParallelGzipWriter(sink: sink)
        let tar = TarWriter(sink: { try gzip.write($0) })
        var statistics = Statistics()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)

        func copy(_ entry: ManifestEntry, as path: String) throws {
            try tar.beginFile(
                path: path, mode: entry.mode & ~Restorer.setIDBits, mtime: entry.mtime, size: entry.size)
            let stream = StreamReader(repository: repository, chunks: entry.chunks, size: entry.size)
            while true {
                let count = try buffer.withUnsafeMutableBytes { try stream.read(into: $0) }
                if count == 0 { break }
                try buffer.withUnsafeBytes { try tar.writeContent(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            }
            try tar.endFile()
        }

        try ManifestReader(repository: repository).forEachEntry(snapshot.record.manifest) { entry in
            let path = entry.path == "." ? "storage" : "storage/" + entry.path
            switch entry.kind {
            case .database: try copy(entry, as: "database.dump")
            case .directory: try tar.appendDirectory(path: path, mode: entry.mode, mtime: entry.mtime)
            case .file: try copy(entry, as: path)
            case .symlink:
                try tar.appendSymlink(path: path, target: entry.target ?? "", mode: entry.mode, mtime: entry.mtime)
            }
            statistics.entries += 1
        }
        try tar.finish()
        try gzip.finish()
        statistics.bytesIn = gzip.bytesIn
        statistics.bytesOut = gzip.bytesOut
        return statistics
    }
}
