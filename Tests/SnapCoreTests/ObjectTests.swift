import Foundation
import SnapTestSupport
import Synchronization
import Testing

@testable import SnapCore

@Suite struct ObjectIDTests {
    @Test func knownVector() {
        let id = ObjectID(hashing: Array("abc".utf8))
        #expect(id.hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func hexRoundTrip() {
        let id = ObjectID(hashing: pseudoRandomBytes(100, seed: 1))
        #expect(ObjectID(hex: id.hex) == id)
        #expect(ObjectID(hex: id.hex.uppercased()) == id)
        #expect(ObjectID(hex: "abc") == nil)
        #expect(ObjectID(hex: String(repeating: "g", count: 64)) == nil)
        #expect(id.bytes.count == 32)
    }

    @Test func orderFollowsHex() {
        let ids = (0..<50).map { ObjectID(hashing: [UInt8($0)]) }
        #expect(ids.sorted().map(\.hex) == ids.map(\.hex).sorted())
    }
}

@Suite struct CompressionTests {
    @Test func roundTripIsOneStandardFrame() throws {
        let data = Array(String(repeating: "snap snap snap ", count: 1000).utf8)
        let frame = data.withUnsafeBytes { ZstdCompressor(level: 3).compress($0) }
        #expect(frame.count < data.count / 10)
        #expect(Array(frame.prefix(4)) == [0x28, 0xB5, 0x2F, 0xFD])  // zstd magic number
        let back = try frame.withUnsafeBytes { try ZstdDecompressor().decompress($0, limit: data.count) }
        #expect(back == data)
    }

    @Test func damagedFramesAreRejected() throws {
        let data = pseudoRandomBytes(10_000, seed: 5)
        let frame = data.withUnsafeBytes { ZstdCompressor(level: 3).compress($0) }
        let decompressor = ZstdDecompressor()
        #expect(throws: SnapError.self) {
            _ = try Array(frame.dropLast()).withUnsafeBytes { try decompressor.decompress($0, limit: 1 << 20) }
        }
        #expect(throws: SnapError.self) {
            _ = try (frame + frame).withUnsafeBytes { try decompressor.decompress($0, limit: 1 << 20) }
        }
        #expect(throws: SnapError.self) {
            _ = try frame.withUnsafeBytes { try decompressor.decompress($0, limit: 100) }
        }
    }
}

@Suite struct ObjectStoreTests {
    @Test func putGetContainsListDelete() throws {
        let folder = try TemporaryDirectory()
        let store = LocalObjectStore(root: folder.path)
        let content = Array("hello".utf8)
        let id = ObjectID(hashing: content)
        #expect(try !store.contains(id))
        #expect(try store.put(id, encoded: [1, 2, 3]))
        try store.flush()
        #expect(try store.contains(id))
        #expect(try store.get(id) == [1, 2, 3])
        #expect(try store.size(of: id) == 3)

        let path = folder.path + "/" + String(id.hex.prefix(2)) + "/" + id.hex
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let folderAttributes = try FileManager.default.attributesOfItem(
            atPath: folder.path + "/" + String(id.hex.prefix(2)))
        #expect((folderAttributes[.posixPermissions] as? Int) == 0o700)

        // An existing object is never rewritten.
        let inode = attributes[.systemFileNumber] as? Int
        #expect(try !store.put(id, encoded: [9, 9, 9]))
        try store.flush()
        #expect(try store.get(id) == [1, 2, 3])
        #expect((try FileManager.default.attributesOfItem(atPath: path)[.systemFileNumber] as? Int) == inode)

        // No temporary files are left behind, and list skips foreign names.
        _ = FileManager.default.createFile(
            atPath: folder.path + "/" + String(id.hex.prefix(2)) + "/notes.txt", contents: Data())
        var listed: [ObjectID] = []
        try store.list { listed.append($0) }
        #expect(listed == [id])
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path + "/" + String(id.hex.prefix(2)))
        #expect(!names.contains { $0.hasPrefix(LocalObjectStore.temporaryPrefix) })

        try store.delete(id)
        #expect(try !store.contains(id))
        #expect(throws: SnapError.self) { try store.get(id) }
    }

    @Test func writerStoresEachChunkOnceAndCounts() throws {
        let folder = try TemporaryDirectory()
        let store = LocalObjectStore(root: folder.path)
        let writer = ObjectWriter(store: store, compressionLevel: 3, workerCount: 2, batchBytes: 10_000)
        var ids: [ObjectID] = []
        for index in 0..<200 {
            let chunk = pseudoRandomBytes(1000 + index % 50, seed: UInt64(index % 50))
            ids.append(try chunk.withUnsafeBytes { try writer.write($0) })
        }
        let statistics = try writer.finish()
        #expect(statistics.chunks == 200)
        #expect(statistics.newObjects == 50)
        var stored = Set<ObjectID>()
        try store.list { stored.insert($0) }
        #expect(stored == Set(ids))
        let decompressor = ZstdDecompressor()
        for id in stored {
            let content = try store.get(id).withUnsafeBytes { try decompressor.decompress($0, limit: 1 << 20) }
            #expect(ObjectID(hashing: content) == id)
        }
    }

    /// A writer let go after an error (no `finish`) waits for the object a worker is writing:
    /// nothing of it still writes while snap reports the error and exits.
    @Test func anAbandonedWriterWaitsForItsWorkers() throws {
        let folder = try TemporaryDirectory()
        let store = GatedStore(LocalObjectStore(root: folder.path))
        let released = Mutex(false)
        let writing = BackgroundWork {
            do {
                let writer = ObjectWriter(
                    store: store, compressionLevel: 1, workerCount: 1, batchBytes: 1000)
                for seed in 0..<3 { _ = try pseudoRandomBytes(2000, seed: UInt64(seed)).withUnsafeBytes(writer.write) }
                while !store.entered.withLock({ $0 }) { usleep(1000) }
            }  // the writer is released here, its worker held in `put`
            released.withLock { $0 = true }
        }
        usleep(300_000)
        #expect(!released.withLock { $0 }, "the writer was released while its worker was still writing")
        store.gate.signal()
        try writing.wait()
        #expect(released.withLock { $0 })
    }

    /// The dump and the storage tree write from two threads at once: every chunk is counted,
    /// each distinct one stored exactly once, whichever thread saw it first.
    @Test func twoThreadsWritingTheSameChunksStoreEachOnce() throws {
        let folder = try TemporaryDirectory()
        let store = LocalObjectStore(root: folder.path)
        let writer = ObjectWriter(store: store, compressionLevel: 1, workerCount: 2, batchBytes: 20_000)
        let chunks = (0..<300).map { pseudoRandomBytes(2000 + $0 % 7, seed: UInt64($0)) }
        let results = Mutex<[[ObjectID]]>([[], []])
        DispatchQueue.concurrentPerform(iterations: 2) { side in
            // Both sides write all 300 (in opposite orders) and 100 of their own.
            let order = side == 0 ? Array(chunks.indices) : chunks.indices.reversed()
            var ids: [ObjectID] = []
            for index in order {
                ids.append(try! chunks[index].withUnsafeBytes { try writer.write($0) })
                if index % 3 == 0 {
                    let own = pseudoRandomBytes(1500, seed: UInt64(10_000 * (side + 1) + index))
                    ids.append(try! own.withUnsafeBytes { try writer.write($0) })
                }
            }
            results.withLock { $0[side] = ids }
        }
        let statistics = try writer.finish()
        let (first, second) = results.withLock { ($0[0], $0[1]) }
        #expect(statistics.chunks == first.count + second.count)
        #expect(statistics.chunks == 800)
        #expect(statistics.newObjects == 500)
        var stored = Set<ObjectID>()
        try store.list { stored.insert($0) }
        #expect(stored == Set(first).union(second))
        #expect(Set(chunks.map { $0.withUnsafeBytes { ObjectID(hashing: $0) } }).isSubset(of: stored))
    }
}

@Suite struct DeferredPublishingTests {
    /// Objects appear under their names only at `flush`, all of them, with no temporary file left.
    @Test func objectsAppearAtFlushAndTemporariesGo() throws {
        let folder = try TemporaryDirectory()
        let store = LocalObjectStore(root: folder.path, flushEvery: 1000)
        let ids = (0..<10).map { ObjectID(hashing: [UInt8($0)]) }
        for id in ids { #expect(try store.put(id, encoded: [1])) }
        #expect(try ids.allSatisfy { try !store.contains($0) })
        try store.flush()
        #expect(try ids.allSatisfy { try store.contains($0) })
        let leftovers = try FileManager.default.subpathsOfDirectory(atPath: folder.path)
            .filter { $0.contains(LocalObjectStore.temporaryPrefix) }
        #expect(leftovers.isEmpty)
    }

    /// Two writers racing to publish the same object: the second finds the name taken, keeps the
    /// first one's bytes, counts it as stored and leaves no temporary file behind.
    @Test func publishingNeverReplacesAnExistingObject() throws {
        let folder = try TemporaryDirectory()
        let first = LocalObjectStore(root: folder.path)
        let second = LocalObjectStore(root: folder.path)
        let id = ObjectID(hashing: [7])
        #expect(try first.put(id, encoded: [1, 1]))
        #expect(try second.put(id, encoded: [2, 2, 2]))
        try first.flush()
        try second.flush()
        #expect(try second.get(id) == [1, 1])
        let leftovers = try FileManager.default.subpathsOfDirectory(atPath: folder.path)
            .filter { $0.contains(LocalObjectStore.temporaryPrefix) }
        #expect(leftovers.isEmpty)
    }

    @Test func putFlushesByItselfPastTheLimit() throws {
        let folder = try TemporaryDirectory()
        let store = LocalObjectStore(root: folder.path, flushEvery: 4)
        let ids = (0..<9).map { ObjectID(hashing: [UInt8($0)]) }
        for id in ids { try store.put(id, encoded: [2]) }
        #expect(try ids.prefix(8).allSatisfy { try store.contains($0) })
        #expect(try !store.contains(ids[8]))
    }
}

/// A real store whose first `put` waits until `gate` is signalled, saying in `entered` that it has
/// begun.
private final class GatedStore: ObjectStore, @unchecked Sendable {
    let base: LocalObjectStore
    let gate = DispatchSemaphore(value: 0)
    let entered = Mutex(false)

    init(_ base: LocalObjectStore) { self.base = base }

    func put(_ id: ObjectID, encoded: [UInt8]) throws -> Bool {
        let first = entered.withLock { hasEntered in
            defer { hasEntered = true }
            return !hasEntered
        }
        if first { gate.wait() }
        return try base.put(id, encoded: encoded)
    }
    func get(_ id: ObjectID) throws -> [UInt8] { try base.get(id) }
    func contains(_ id: ObjectID) throws -> Bool { try base.contains(id) }
    func containsOrPending(_ id: ObjectID) throws -> Bool { try base.containsOrPending(id) }
    func list(_ body: (ObjectID) throws -> Void) throws { try base.list(body) }
    func size(of id: ObjectID) throws -> UInt64? { try base.size(of: id) }
    func delete(_ id: ObjectID) throws { try base.delete(id) }
    func flush() throws { try base.flush() }
}
