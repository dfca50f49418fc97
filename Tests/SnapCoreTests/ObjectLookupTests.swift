import Foundation
import SnapTestSupport
import Synchronization
import Testing

@testable import SnapCore

/// A snapshot asks the store about each chunk instead of loading every object name the repository
/// has (that cost 23 MB and 0.3 s per 200,000 objects in every snapshot), and still stores each
/// chunk exactly once, whether the repository had it, this run queued it, wrote it and waits to
/// publish it, or published it already.
@Suite struct ObjectLookupTests {
    @Test func aSnapshotLooksChunksUpInsteadOfListingTheStore() throws {
        let folder = try TemporaryDirectory()
        let plain = try Repository.initialize(at: folder.path + "/repo")
        let (a, b, c) = (
            pseudoRandomBytes(5000, seed: 1), pseudoRandomBytes(6000, seed: 2), pseudoRandomBytes(7000, seed: 3)
        )
        let first = try snapshot(plain, files: [a, b])
        #expect(first.record.totals.newObjects == 3)  // a, b and the manifest

        let store = CountingStore(plain.store)
        let repository = Repository(path: plain.path, config: plain.config, owner: plain.owner, store: store)
        let second = try snapshot(repository, files: [a, b, c, c])
        #expect(store.listings.withLock { $0 } == 0, "the snapshot listed the store")
        #expect(store.lookups.withLock { $0 } >= 3)
        #expect(second.record.totals.newObjects == 2)  // c once, and the manifest
        #expect(second.record.totals.newBytes == UInt64(c.count) + second.record.manifest.size)
        #expect(store.puts.withLock { $0 } == 2)
        var stored = 0
        try plain.store.list { _ in stored += 1 }
        #expect(stored == 5)
    }

    /// 300 chunks, 40 distinct, written by two threads through a store that publishes every third
    /// object: a repeated chunk is met in flight, pending in the store, and published.
    @Test func eachChunkIsStoredOnceWhateverStageItsFirstCopyIsIn() throws {
        let folder = try TemporaryDirectory()
        let store = LocalObjectStore(root: folder.path, flushEvery: 3)
        let writer = ObjectWriter(store: store, compressionLevel: 1, workerCount: 2, batchBytes: 5000)
        let distinct = (0..<40).map { pseudoRandomBytes(1000 + $0, seed: UInt64($0)) }
        DispatchQueue.concurrentPerform(iterations: 2) { side in
            for index in 0..<150 {
                let chunk = distinct[(index * 7 + side * 3) % 40]
                _ = try! chunk.withUnsafeBytes { try writer.write($0) }
                if index % 10 == 0 { usleep(1000) }  // let workers and flushes get ahead
            }
        }
        let statistics = try writer.finish()
        #expect(statistics.chunks == 300)
        #expect(statistics.newObjects == 40)
        #expect(statistics.newBytes == UInt64(distinct.map(\.count).reduce(0, +)))
        var stored = Set<ObjectID>()
        try store.list { stored.insert($0) }
        #expect(stored == Set(distinct.map { ObjectID(hashing: $0) }))
        // A later run finds them all in the store.
        let again = ObjectWriter(store: store, compressionLevel: 1)
        for chunk in distinct { _ = try chunk.withUnsafeBytes { try again.write($0) } }
        #expect(try again.finish().newObjects == 0)
    }

    /// Stores one file entry per stream and commits.
    private func snapshot(_ repository: Repository, files: [[UInt8]]) throws -> Snapshot {
        let writer = try SnapshotWriter(repository: repository)
        try writer.append(ManifestEntry(kind: .directory, path: ".", mode: 0o755, mtime: 0))
        for (index, bytes) in files.enumerated() {
            let stream = try writer.storeStream(.files, read: memorySource(bytes))
            try writer.append(
                ManifestEntry(
                    kind: .file, path: "f\(index)", mode: 0o644, mtime: 0, size: stream.size, chunks: stream.chunks))
        }
        return try writer.commit(
            time: Timestamp(seconds: 1), host: "h", tags: [], program: "test", sources: .init(storage: "/s"), errors: []
        )
    }
}

/// A real store that counts what it is asked.
private final class CountingStore: ObjectStore, Sendable {
    let base: any ObjectStore
    let listings = Mutex(0)
    let lookups = Mutex(0)
    let puts = Mutex(0)

    init(_ base: any ObjectStore) { self.base = base }

    func put(_ id: ObjectID, encoded: [UInt8]) throws -> Bool {
        puts.withLock { $0 += 1 }
        return try base.put(id, encoded: encoded)
    }
    func get(_ id: ObjectID) throws -> [UInt8] { try base.get(id) }
    func contains(_ id: ObjectID) throws -> Bool { try base.contains(id) }
    func containsOrPending(_ id: ObjectID) throws -> Bool {
        lookups.withLock { $0 += 1 }
        return try base.containsOrPending(id)
    }
    func list(_ body: (ObjectID) throws -> Void) throws {
        listings.withLock { $0 += 1 }
        try base.list(body)
    }
    func size(of id: ObjectID) throws -> UInt64? { try base.size(of: id) }
    func delete(_ id: ObjectID) throws { try base.delete(id) }
    func flush() throws { try base.flush() }
}
