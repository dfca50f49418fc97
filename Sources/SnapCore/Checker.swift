import Foundation
import Synchronization

/// Verifies a repository: every record parses and matches its id, every manifest reads, every
/// object a snapshot needs exists, and (with `readData`) every object decompresses to bytes whose
/// SHA-256 is its name.
public struct Checker: Sendable {
    public struct Report: Sendable {
        public var snapshots = 0
        public var objectsChecked = 0
        public var referencedObjects = 0
        /// One line per problem, naming the damaged thing and the snapshots that need it.
        public var problems: [String] = []
        /// Files that do not belong in a repository: reported, ignored, never a reason to fail.
        public var warnings: [String] = []
        public var isHealthy: Bool { problems.isEmpty }
    }

    let repository: Repository

    public init(repository: Repository) { self.repository = repository }

    /// `readDataPercent`: nil checks structure only; 100 reads every object; less reads a random
    /// subset of that share.
    public func run(readDataPercent: Double? = nil) throws -> Report {
        var report = Report()
        let (snapshots, recordProblems) = try repository.snapshots()
        report.problems += recordProblems
        report.snapshots = snapshots.count
        // Every object a snapshot needs (the manifests' own chunks too), in one set: which
        // snapshot needs which is worked out later, and only for the objects with a problem.
        // This set is what a check's memory grows with: one name per object the snapshots
        // need, since any of them may be missing. The store's listing is walked against it,
        // not held beside it (only the objects to read are kept, for --read-data).
        let reader = ManifestReader(repository: repository)
        var referenced = Set<ObjectID>()
        var unreadable: [String: String] = [:]
        for snapshot in snapshots {
            referenced.formUnion(snapshot.record.manifest.chunks)
            do {
                try reader.forEachEntry(snapshot.record.manifest) { referenced.formUnion($0.chunks) }
            } catch {
                unreadable[snapshot.id] = "\(error)"
            }
        }
        report.referencedObjects = referenced.count
        var storedAndReferenced = 0
        var stored: [ObjectID] = []
        let foreign = try repository.scanObjects { id in
            if referenced.contains(id) { storedAndReferenced += 1 }
            if readDataPercent != nil { stored.append(id) }
        }
        report.warnings = foreign.map {
            "\($0) does not belong in a snap repository; snap ignores it (move it elsewhere)"
        }

        for (id, reason) in unreadable.sorted(by: { $0.key < $1.key }) {
            report.problems.append("snapshot \(id.prefix(8)): its manifest cannot be read: \(reason)")
        }
        // Objects are never deleted under the shared lock, so every needed one the listing
        // did not show is missing; they are looked up one by one only when there are some.
        let missing =
            storedAndReferenced == referenced.count
            ? [] : try referenced.filter { try !repository.store.contains($0) }.sorted()
        var failed: [(ObjectID, Failure)] = []
        if let percent = readDataPercent {
            var candidates = stored
            if percent < 100 {
                candidates.shuffle()
                candidates = Array(candidates.prefix(Int((Double(candidates.count) * percent / 100).rounded(.up))))
            }
            candidates.sort()
            failed = verify(candidates).sorted { $0.key < $1.key }
            report.objectsChecked = candidates.count
        }
        let users = snapshotsNeeding(Set(missing + failed.map(\.0)), snapshots, reader)
        for id in missing {
            report.problems.append("object \(id.hex) is missing; needed by \(describe(users[id]))")
        }
        for (id, failure) in failed {
            let needed = referenced.contains(id) ? "needed by \(describe(users[id]))" : "not needed by any snapshot"
            switch failure {
            case .damaged(let reason):
                report.problems.append("object \(id.hex) is damaged (\(reason)); \(needed)")
            case .unreadable(let error):
                // Not damage: moving such an object out, as OPERATIONS.md says for damaged ones,
                // would throw good data away.
                report.problems.append("object \(id.hex) cannot be read, so it was not checked (\(needed)): \(error)")
            }
        }
        return report
    }

    /// Why an object failed its check: its bytes are wrong, or they could not be read at all (a
    /// permission error, an I/O error), which says nothing about them.
    fileprivate enum Failure: Sendable {
        case damaged(String)
        case unreadable(String)
    }

    /// For each object of `wanted`, the short ids of the snapshots that need it.
    private func snapshotsNeeding(_ wanted: Set<ObjectID>, _ snapshots: [Snapshot], _ reader: ManifestReader)
        -> [ObjectID: [String]]
    {
        guard !wanted.isEmpty else { return [:] }
        var users: [ObjectID: [String]] = [:]
        for snapshot in snapshots {
            var mine = Set(snapshot.record.manifest.chunks.filter(wanted.contains))
            try? reader.forEachEntry(snapshot.record.manifest) { entry in
                for chunk in entry.chunks where wanted.contains(chunk) { mine.insert(chunk) }
            }
            for id in mine { users[id, default: []].append(String(snapshot.id.prefix(8))) }
        }
        return users
    }

    private func describe(_ users: [String]?) -> String {
        guard let users, !users.isEmpty else { return "no snapshot" }
        return "snapshot " + users.sorted().joined(separator: ", ")
    }

    /// Reads and re-hashes objects on every core; returns those that failed, and why.
    private func verify(_ ids: [ObjectID]) -> [ObjectID: Failure] {
        let damaged = DamageList()
        let workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
        let perWorker = (ids.count + workers - 1) / max(workers, 1)
        // Plain threads, not concurrentPerform: that one may run everything on the calling thread.
        let done = DispatchGroup()
        for worker in 0..<workers {
            let start = worker * perWorker
            guard start < ids.count else { break }
            let slice = ids[start..<min(ids.count, start + perWorker)]
            done.enter()
            Thread { [repository] in
                let decompressor = ZstdDecompressor()
                for id in slice {
                    let failure: Failure?
                    do {
                        if case .failure(let damage) = try repository.decodeObject(id, decompressor: decompressor) {
                            failure = .damaged(damage.reason)
                        } else {
                            failure = nil
                        }
                    } catch {
                        failure = .unreadable("\(error)")
                    }
                    if let failure { damaged.list.withLock { $0[id] = failure } }
                }
                done.leave()
            }.start()
        }
        done.wait()
        return damaged.list.withLock { $0 }
    }
}

/// Objects that failed, found by the verifying threads.
private final class DamageList: Sendable {
    let list = Mutex<[ObjectID: Checker.Failure]>([:])
}
