import CZstd

/// What changed between two snapshots: files added, removed and changed, and the database dump.
public struct SnapshotDiff: Sendable, Encodable {
    public struct Entry: Sendable, Encodable, Equatable {
        public var path: String
        public var type: String
        public var size: UInt64
        /// The size in the first snapshot, for changed entries.
        public var oldSize: UInt64?

        enum CodingKeys: String, CodingKey {
            case path, type, size
            case oldSize = "old_size"
        }
    }

    public struct Database: Sendable, Encodable, Equatable {
        public var oldSize: UInt64?
        public var newSize: UInt64?
        /// Bytes of the second dump in chunks the first dump does not have.
        public var changedBytes: UInt64

        enum CodingKeys: String, CodingKey {
            case oldSize = "old_size"
            case newSize = "new_size"
            case changedBytes = "changed_bytes"
        }
    }

    public var from: String
    public var to: String
    public var added: [Entry] = []
    public var removed: [Entry] = []
    public var changed: [Entry] = []
    public var database: Database?

    /// Compares `old` with `new`, holding one snapshot's file list in memory.
    public init(repository: Repository, from old: Snapshot, to new: Snapshot) throws {
        from = old.id
        to = new.id
        let reader = ManifestReader(repository: repository)
        var before: [[UInt8]: ManifestEntry] = [:]
        var oldDump: ManifestEntry?
        try reader.forEachEntry(old.record.manifest) { entry in
            if entry.kind == .database {
                oldDump = entry
            } else if entry.path != "." {
                before[Array(entry.path.utf8)] = entry
            }
        }
        var newDump: ManifestEntry?
        try reader.forEachEntry(new.record.manifest) { entry in
            if entry.kind == .database {
                newDump = entry
                return
            }
            guard entry.path != "." else { return }
            let key = Array(entry.path.utf8)
            guard let previous = before.removeValue(forKey: key) else {
                added.append(Entry(path: entry.path, type: entry.kind.rawValue, size: entry.size))
                return
            }
            let same =
                previous.kind == entry.kind && previous.chunks == entry.chunks && previous.mode == entry.mode
                && previous.target == entry.target && (entry.kind == .directory || previous.mtime == entry.mtime)
            if !same {
                changed.append(
                    Entry(path: entry.path, type: entry.kind.rawValue, size: entry.size, oldSize: previous.size))
            }
        }
        removed = before.values.map { Entry(path: $0.path, type: $0.kind.rawValue, size: $0.size) }
            .sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
        if oldDump != nil || newDump != nil {
            let known = Set(oldDump?.chunks ?? [])
            var changedBytes: UInt64 = 0
            for chunk in Set(newDump?.chunks ?? []) where !known.contains(chunk) {
                changedBytes += try repository.contentSize(of: chunk)
            }
            database = Database(oldSize: oldDump?.size, newSize: newDump?.size, changedBytes: changedBytes)
        }
    }
}

/// Repository totals: what the snapshots hold, what is stored, and what each snapshot alone keeps.
public struct RepositoryStatistics: Sendable, Encodable {
    public struct PerSnapshot: Sendable, Encodable {
        public var id: String
        public var time: String
        public var logicalBytes: UInt64
        /// Stored bytes of the objects no other snapshot references: what forgetting it would free.
        public var uniqueStoredBytes: UInt64

        enum CodingKeys: String, CodingKey {
            case id, time
            case logicalBytes = "logical_bytes"
            case uniqueStoredBytes = "unique_stored_bytes"
        }
    }

    public var snapshots = 0
    public var objects = 0
    /// The bytes the snapshots hold, summed over snapshots (files and dumps, uncompressed).
    public var logicalBytes: UInt64 = 0
    /// The bytes the object files take.
    public var storedBytes: UInt64 = 0
    public var dedupRatio: Double = 0
    public var perSnapshot: [PerSnapshot] = []

    enum CodingKeys: String, CodingKey {
        case snapshots, objects
        case logicalBytes = "logical_bytes"
        case storedBytes = "stored_bytes"
        case dedupRatio = "dedup_ratio"
        case perSnapshot = "per_snapshot"
    }

    public init(repository: Repository) throws {
        let all = try repository.snapshots().snapshots
        snapshots = all.count
        let reader = ManifestReader(repository: repository)
        // How many snapshots reference each object, and which one when it is only one.
        var owners: [ObjectID: Int] = [:]
        var single: [ObjectID: Int] = [:]
        for (index, snapshot) in all.enumerated() {
            var mine = Set(snapshot.record.manifest.chunks)
            try reader.forEachEntry(snapshot.record.manifest) { mine.formUnion($0.chunks) }
            for id in mine {
                owners[id, default: 0] += 1
                single[id] = index
            }
            logicalBytes += snapshot.record.totals.fileBytes + snapshot.record.totals.databaseBytes
        }
        var unique = [UInt64](repeating: 0, count: all.count)
        try repository.store.list { id in
            let size = try repository.store.size(of: id) ?? 0
            objects += 1
            storedBytes += size
            if owners[id] == 1, let index = single[id] { unique[index] += size }
        }
        dedupRatio = storedBytes == 0 ? 0 : Double(logicalBytes) / Double(storedBytes)
        perSnapshot = all.enumerated().map { index, snapshot in
            PerSnapshot(
                id: snapshot.id, time: snapshot.record.time.iso8601Seconds,
                logicalBytes: snapshot.record.totals.fileBytes + snapshot.record.totals.databaseBytes,
                uniqueStoredBytes: unique[index])
        }
    }
}

extension Repository {
    /// The uncompressed size of an object, from its zstd frame header.
    func contentSize(of id: ObjectID) throws -> UInt64 {
        let encoded = try store.get(id)
        let size = encoded.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, $0.count) }
        guard size != ZSTD_CONTENTSIZE_ERROR, size != ZSTD_CONTENTSIZE_UNKNOWN else {
            throw SnapError(.corrupt, "object \(id.hex) is damaged (no content size); run `snap check --read-data`")
        }
        return size
    }
}
