import Foundation
import SnapTestSupport
import Testing

@testable import SnapPostgres

@Suite("DumpDataIndex", needsServer)
struct DumpDataIndexTests {
    /// pg_dump writing to a file records every data offset itself: the index must find each
    /// block exactly there, whatever sizes the bytes arrive in, compressed or not.
    @Test(arguments: ["-Z0", "-Z6"]) func findsTheOffsetsPgDumpWritesIntoAFile(compression: String) throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "index", rows: 3000)
        defer { try? cluster.dropDatabase(source) }
        let folder = try TemporaryDirectory()
        let file = folder.file("seekable.dump")
        let dumped = try cluster.runClient("pg_dump", ["-Fc", compression, "-f", file, "-d", source])
        #expect(dumped.succeeded, "\(dumped.stderr)")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: file)))

        for pieceSize in [1, 7, 4096, 1 << 20] {
            var index = DumpDataIndex()
            feed(&index, bytes, pieceSize: pieceSize)
            #expect(index.finish().isEmpty, "pg_dump set every offset: nothing to patch")
            let withData = index.fields.filter { $0.state == 2 }
            // items, notes and the large object at least.
            #expect(withData.count >= 3, "\(index.fields)")
            for field in withData {
                #expect(
                    index.dataStarts[field.dumpID] == field.storedOffset,
                    "entry \(field.dumpID), pieces of \(pieceSize)")
            }
            #expect(Set(withData.map(\.dumpID)) == Set(index.dataStarts.keys))
            // The blocks run from the first one to the end of the dump.
            let layout = try #require(index.tableData)
            let first = try #require(index.dataStarts.values.min())
            #expect(layout.entries == withData.count)
            #expect(layout.totalBytes == Int64(bytes.count - first))
            #expect(layout.largestBytes > 0 && layout.largestBytes < layout.totalBytes)
        }
    }

    /// A dump streamed through a pipe has no offsets; the patched copy has the ones pg_dump would
    /// have written, and a parallel pg_restore of it gives the source back.
    @Test func patchedStreamedDumpHasEveryOffsetAndRestoresInParallel() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "patch", rows: 3000)
        let target = cluster.uniqueDatabaseName("patched")
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        var bytes = try dumpWhole(cluster, source).bytes

        var index = DumpDataIndex()
        feed(&index, bytes, pieceSize: 65536)
        let patches = index.finish()
        #expect(index.fields.contains { $0.state == 1 })
        #expect(patches.count == index.dataStarts.count && patches.count >= 3)
        for patch in patches {
            bytes.replaceSubrange(patch.position..<patch.position + patch.bytes.count, with: patch.bytes)
        }

        var again = DumpDataIndex()
        feed(&again, bytes, pieceSize: 1000)
        #expect(again.finish().isEmpty)
        for field in again.fields where field.state != 3 {
            #expect(field.state == 2)
            #expect(again.dataStarts[field.dumpID] == field.storedOffset)
        }

        let folder = try TemporaryDirectory()
        let file = try folder.write("patched.dump", bytes)
        try cluster.createDatabase(target)
        let restored = try cluster.runClient("pg_restore", ["--exit-on-error", "-j", "2", "-d", target, file])
        #expect(restored.succeeded, "\(restored.stderr)")
        #expect(try cluster.pgDumpPlain(database: target) == (try cluster.pgDumpPlain(database: source)))
    }

    /// The temporary copy a parallel restore makes has every data offset set.
    @Test func spooledCopyHasTheOffsets() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "spool", rows: 3000)
        let target = cluster.uniqueDatabaseName("spooltarget")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        let bytes = try dumpWhole(cluster, source).bytes
        let folder = try TemporaryDirectory()
        let restore = try DumpRestore(
            conninfo: cluster.conninfo(database: target), options: RestoreOptions(jobs: 2, spoolDirectory: folder.path))
        let spooled = try restore.spool(ByteReader(bytes).read)
        // Unlinked from the start: nothing of the copy is left in the folder, even while it is used.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        #expect(spooled.path.hasPrefix("/proc/"))
        let copy = Array(try Data(contentsOf: URL(fileURLWithPath: spooled.path)))
        #expect(copy.count == bytes.count)
        var index = DumpDataIndex()
        feed(&index, copy, pieceSize: 65536)
        #expect(index.finish().isEmpty)
        let withData = index.fields.filter { $0.state != 3 }
        #expect(withData.count >= 3)
        for field in withData {
            #expect(field.state == 2)
            #expect(index.dataStarts[field.dumpID] == field.storedOffset)
        }
    }

    /// Anything that is not a whole custom-format dump is left alone.
    @Test func givesUpOnWhatItCannotRead() throws {
        let cases: [[UInt8]] = [
            [],
            Array("-- PostgreSQL database dump\nSET statement_timeout = 0;\n".utf8),
            Array("PGDMP".utf8) + [1, 99, 0, 4, 8, 1] + [UInt8](repeating: 0, count: 10_000),  // version 1.99
            Array("PGDMP".utf8) + [1, 14, 0, 4, 8, 3] + [UInt8](repeating: 0, count: 10_000),  // tar format
            pseudoRandomBytes(100_000, seed: 3),
            // A valid 1.14 header whose first string claims Int.max bytes: no sum may overflow.
            Array("PGDMP".utf8) + [1, 14, 0, 8, 8, 1] + [UInt8](repeating: 0, count: 9 * 8)
                + [0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F] + [UInt8](repeating: 0, count: 1000),
        ]
        for bytes in cases {
            var index = DumpDataIndex()
            feed(&index, bytes, pieceSize: 777)
            #expect(index.finish().isEmpty)
        }
    }

    @Test func truncatedDumpIsLeftAlone() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "trunc")
        defer { try? cluster.dropDatabase(source) }
        let (bytes, session) = try dumpWhole(cluster, source)
        var whole = DumpDataIndex()
        feed(&whole, bytes, pieceSize: 4096)
        #expect(!whole.finish().isEmpty)
        var cut = DumpDataIndex()
        feed(&cut, Array(bytes.dropLast(3)), pieceSize: 4096)
        #expect(cut.finish().isEmpty)
        // A damaged block section: a wrong block type, or bytes after the last block.
        let firstBlock = try #require(whole.dataStarts.values.min())
        var wrongType = bytes
        wrongType[firstBlock] = 7
        var garbageAfter = bytes
        garbageAfter += [9, 9, 9]
        for damaged in [wrongType, garbageAfter] {
            var index = DumpDataIndex()
            feed(&index, damaged, pieceSize: 4096)
            #expect(index.finish().isEmpty)
            #expect(index.tableData == nil)
        }
        #expect(cut.tableData == nil)
        // The session learned the same layout as it streamed.
        #expect(session.facts.tableData == whole.tableData)
        #expect(session.facts.tableData?.entries ?? 0 >= 3)
    }

    private func feed(_ index: inout DumpDataIndex, _ bytes: [UInt8], pieceSize: Int) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let end = min(offset + pieceSize, raw.count)
                index.feed(UnsafeRawBufferPointer(rebasing: raw[offset..<end]))
                offset = end
            }
        }
    }
}
