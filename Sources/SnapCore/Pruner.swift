import Foundation

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

    /// Deletes what no snapshot needs; with `forgetting`, first removes those snapshots' records,
    /// once every other snapshot's record and manifest has been read (so a refusal changes
    /// nothing, and a dry run counts what the real run would delete).
    public func run(dryRun: Bool = false, forgetting forgotten: [String] = []) throws -> Report {
        var report = Report()
        let (snapshots, problems) = try repository.snapshots()
        if let problem = problems.first {
            throw SnapError(
                .corrupt,
                "refusing to prune: \(problem); prune must read every snapshot record, or it could not tell that snapshot's objects from garbage"
                    + (forgotten.isEmpty ? "" : " (nothing was forgotten)"))
        }
        let forgottenIDs = Set(forgotten)
        let remaining = snapshots.filter { !forgottenIDs.contains($0.id) }
        report.snapshots = remaining.count

        var referenced = Set<ObjectID>()
        let reader = ManifestReader(repository: repository)
        for snapshot in remaining {
            referenced.formUnion(snapshot.record.manifest.chunks)
            do {
                try reader.forEachEntry(snapshot.record.manifest) { referenced.formUnion($0.chunks) }
            } catch {
                throw SnapError(
                    .corrupt,
                    "refusing to prune: the manifest of snapshot \(snapshot.shortID) cannot be read (\(error)); run `snap check`"
                        + (forgotten.isEmpty ? "" : " (nothing was forgotten)"))
            }
        }
        if !dryRun { try repository.forget(forgotten) }

        var unreferenced: [ObjectID] = []
        try repository.store.list { id in
            if referenced.contains(id) {
                report.objectsKept += 1
            } else {
                unreferenced.append(id)
            }
        }
        let (deleted, freed) = try delete(unreferenced, dryRun: dryRun)
        report.objectsDeleted = deleted
        report.bytesFreed = freed
        report.leftoversDeleted = try repository.removeLeftovers(dryRun: dryRun)
        if !dryRun { try repository.store.flush() }
        return report
    }

    /// Deletes on several threads, one `objects/XX/` folder at a time each: an unlink waits for the
    /// disk (a discard, on filesystems mounted with it), and waits in different folders overlap.
    private func delete(_ ids: [ObjectID], dryRun: Bool) throws -> (count: Int, bytes: UInt64) {
        let folders = Dictionary(grouping: ids) { $0.w0 >> 56 }.values.map { Array($0) }
        let progress = DeletionProgress(folders: folders)
        let done = DispatchGroup()
        for _ in 0..<min(8, max(1, folders.count)) {
            done.enter()
            Thread { [repository] in
                while let folder = progress.nextFolder() {
                    do {
                        var bytes: UInt64 = 0
                        for id in folder {
                            bytes += try repository.store.size(of: id) ?? 0
                            if !dryRun { try repository.store.delete(id) }
                        }
                        progress.add(count: folder.count, bytes: bytes)
                    } catch {
                        progress.fail(error)
                    }
                }
                done.leave()
            }.start()
        }
        done.wait()
        return try progress.result()
    }
}

/// Shared state of the deleting threads.
private final class DeletionProgress: @unchecked Sendable {
    private let lock = NSLock()
    private var folders: [[ObjectID]]
    private var count = 0
    private var bytes: UInt64 = 0
    private var failure: (any Error)?

    init(folders: [[ObjectID]]) { self.folders = folders }

    func nextFolder() -> [ObjectID]? {
        lock.withLock { failure == nil ? folders.popLast() : nil }
    }

    func add(count: Int, bytes: UInt64) {
        lock.withLock {
            self.count += count
            self.bytes += bytes
        }
    }

    func fail(_ error: any Error) { lock.withLock { if failure == nil { failure = error } } }

    func result() throws -> (count: Int, bytes: UInt64) {
        try lock.withLock {
            if let failure { throw failure }
            return (count, bytes)
        }
    }
}
