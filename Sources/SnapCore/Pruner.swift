/// Deletes every object no snapshot references, and the leftovers of interrupted runs.
///
/// Run it under the exclusive repository lock: then no snapshot is in flight, and everything a
/// committed snapshot needs is found by reading every record and manifest. If any record or
/// manifest cannot be read, prune refuses to delete anything: it cannot know what that snapshot
/// needs.
public struct Pruner {
    public struct Report: Sendable, Encodable {
        public var snapshots = 0
        public var objectsKept = 0
        public var objectsDeleted = 0
        public var bytesFreed: UInt64 = 0
        public var leftoversDeleted = 0

        enum CodingKeys: String, CodingKey {
            case snapshots
            case objectsKept = "objects_kept"
            case objectsDeleted = "objects_deleted"
            case bytesFreed = "bytes_freed"
            case leftoversDeleted = "leftovers_deleted"
        }
    }

    let repository: Repository
    let lock: RepositoryLock

    /// `lock` must be the exclusive lock of `repository`.
    public init(repository: Repository, lock: RepositoryLock) {
        precondition(lock.kind == .exclusive, "prune needs the exclusive repository lock")
        self.repository = repository
        self.lock = lock
    }

    public func run(dryRun: Bool = false) throws -> Report {
        var report = Report()
        let (snapshots, problems) = try repository.snapshots()
        if let problem = problems.first {
            throw SnapError(
                .corrupt, "refusing to prune: \(problem); a damaged record's objects cannot be told apart from garbage")
        }
        report.snapshots = snapshots.count

        var referenced = Set<ObjectID>()
        let reader = ManifestReader(repository: repository)
        for snapshot in snapshots {
            referenced.formUnion(snapshot.record.manifest.chunks)
            do {
                try reader.forEachEntry(snapshot.record.manifest) { referenced.formUnion($0.chunks) }
            } catch {
                throw SnapError(
                    .corrupt,
                    "refusing to prune: the manifest of snapshot \(snapshot.shortID) cannot be read (\(error)); run `snap check`"
                )
            }
        }

        var unreferenced: [ObjectID] = []
        try repository.store.list { id in
            if referenced.contains(id) {
                report.objectsKept += 1
            } else {
                unreferenced.append(id)
            }
        }
        for id in unreferenced {
            report.bytesFreed += try repository.store.size(of: id) ?? 0
            if !dryRun { try repository.store.delete(id) }
            report.objectsDeleted += 1
        }
        report.leftoversDeleted = try repository.removeLeftovers(dryRun: dryRun)
        if !dryRun { try repository.store.flush() }
        return report
    }
}
