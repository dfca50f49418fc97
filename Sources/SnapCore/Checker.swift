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
        let stored = try repository.objectNames()
        report.warnings = try repository.foreignFiles().map {
            "\($0) does not belong in a snap repository; snap ignores it (move it elsewhere)"
        }

        // Which objects each snapshot needs; the manifest's own chunks count too.
        let reader = ManifestReader(repository: repository)
        var needs: [String: Set<ObjectID>] = [:]
        var unreadable: [String: String] = [:]
        for snapshot in snapshots {
            var objects = Set(snapshot.record.manifest.chunks)
            do {
                try reader.forEachEntry(snapshot.record.manifest) { objects.formUnion($0.chunks) }
            } catch {
                unreadable[snapshot.id] = "\(error)"
            }
            needs[snapshot.id] = objects
        }
        let referenced = needs.values.reduce(into: Set<ObjectID>()) { $0.formUnion($1) }
        report.referencedObjects = referenced.count

        for (id, reason) in unreadable.sorted(by: { $0.key < $1.key }) {
            report.problems.append("snapshot \(id.prefix(8)): its manifest cannot be read: \(reason)")
        }
        for missing in referenced.subtracting(stored).sorted() {
            report.problems.append("object \(missing.hex) is missing; needed by \(users(of: missing, needs))")
        }

        if let percent = readDataPercent {
            var candidates = Array(stored)
            if percent < 100 {
                candidates.shuffle()
                candidates = Array(candidates.prefix(Int((Double(candidates.count) * percent / 100).rounded(.up))))
            }
            candidates.sort()
            let damaged = verify(candidates)
            report.objectsChecked = candidates.count
            for (id, reason) in damaged.sorted(by: { $0.key < $1.key }) {
                let needed =
                    referenced.contains(id) ? "needed by \(users(of: id, needs))" : "not needed by any snapshot"
                report.problems.append("object \(id.hex) is damaged (\(reason)); \(needed)")
            }
        }
        return report
    }

    private func users(of id: ObjectID, _ needs: [String: Set<ObjectID>]) -> String {
        let ids = needs.filter { $0.value.contains(id) }.keys.sorted().map { String($0.prefix(8)) }
        return ids.isEmpty ? "no snapshot" : "snapshot " + ids.joined(separator: ", ")
    }

    /// Reads and re-hashes objects on every core; returns the damaged ones with the reason.
    private func verify(_ ids: [ObjectID]) -> [ObjectID: String] {
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
                    let reason: String?
                    do {
                        if case .failure(let damage) = try repository.decodeObject(id, decompressor: decompressor) {
                            reason = damage.reason
                        } else {
                            reason = nil
                        }
                    } catch {
                        reason = "\(error)"
                    }
                    if let reason { damaged.list.withLock { $0[id] = reason } }
                }
                done.leave()
            }.start()
        }
        done.wait()
        return damaged.list.withLock { $0 }
    }
}

/// Damaged objects found by the verifying threads.
private final class DamageList: Sendable {
    let list = Mutex<[ObjectID: String]>([:])
}
