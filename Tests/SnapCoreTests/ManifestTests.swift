import Foundation
import SnapTestSupport
import Synchronization
import Testing

@testable import SnapCore

@Suite struct ManifestTests {
    @Test func lineEncodingIsExact() {
        let id = ObjectID(hashing: Array("abc".utf8))
        let file = ManifestEntry(
            kind: .file, path: "a b/ü\"q\\\n\t.txt", mode: 0o644, mtime: 1_700_000_000_123_456_789, size: 3,
            chunks: [id])
        let expected =
            #"{"type":"file","path":"a b/ü\"q\\\n\t.txt","mode":420,"mtime":1700000000123456789,"size":3,"chunks":["\#(id.hex)"]}"#
            + "\n"
        #expect(String(decoding: file.encodedLine(), as: UTF8.self) == expected)

        let link = ManifestEntry(kind: .symlink, path: "l", mode: 0o777, mtime: -5, target: "../x\u{1}")
        #expect(
            String(decoding: link.encodedLine(), as: UTF8.self)
                == #"{"type":"symlink","path":"l","mode":511,"mtime":-5,"size":0,"target":"../x\u0001"}"# + "\n")

        let folder = ManifestEntry(kind: .directory, path: ".", mode: 0o755, mtime: 0)
        #expect(
            String(decoding: folder.encodedLine(), as: UTF8.self)
                == #"{"type":"dir","path":".","mode":493,"mtime":0,"size":0}"# + "\n")
    }

    @Test func linesDecodeBack() throws {
        let entries = [
            ManifestEntry(kind: .directory, path: "日本語 フォルダ", mode: 0o700, mtime: 1),
            ManifestEntry(kind: .file, path: "日本語 フォルダ/e\u{301}.bin", mode: 0o4755, mtime: 2, size: 0),
            ManifestEntry(kind: .symlink, path: "x", mode: 0o777, mtime: 3, target: "/nowhere \"quoted\""),
            ManifestEntry(
                kind: .database, path: "database.dump", mode: 0o600, mtime: 4, size: 10,
                chunks: [ObjectID(hashing: [1])]),
        ]
        for entry in entries {
            let line = entry.encodedLine()
            #expect(try ManifestEntry.decode(line: line.dropLast()) == entry)
        }
    }

    @Test func manifestStreamsThroughTheStore() throws {
        let folder = try TemporaryDirectory()
        let repository = try Repository.initialize(at: folder.path + "/repo")
        let objects = ObjectWriter(store: repository.store, compressionLevel: 3)
        // Tiny chunks so that lines straddle chunk boundaries.
        let writer = ManifestWriter(
            parameters: ChunkerParameters(minSize: 64, averageSize: 256, maxSize: 1024), objects: objects)
        let entries = (0..<500).map {
            ManifestEntry(kind: .file, path: "folder/file \($0)", mode: 0o644, mtime: Int64($0), size: 0)
        }
        for entry in entries { try writer.append(entry) }
        let reference = try writer.finish()
        _ = try objects.finish()
        #expect(reference.chunks.count > 10)
        var read: [ManifestEntry] = []
        try ManifestReader(repository: repository).forEachEntry(reference) { read.append($0) }
        #expect(read == entries)
    }
}

@Suite struct TimestampTests {
    @Test func formatsAndParses() {
        let time = Timestamp(nanoseconds: 1_768_132_800_123_456_789)
        #expect(time.iso8601 == "2026-01-11T12:00:00.123456Z")
        #expect(time.iso8601Seconds == "2026-01-11T12:00:00Z")
        #expect(time.compactUTC == "20260111_120000")
        #expect(Timestamp(iso8601: "2026-01-11T12:00:00Z") == Timestamp(seconds: 1_768_132_800))
        #expect(Timestamp(iso8601: "2026-01-11T12:00:00.5Z")?.nanoseconds == 1_768_132_800_500_000_000)
        #expect(Timestamp(iso8601: time.iso8601)?.nanoseconds == 1_768_132_800_123_456_000)
        #expect(Timestamp(seconds: 0).iso8601Seconds == "1970-01-01T00:00:00Z")
        #expect(Timestamp(seconds: -1).iso8601Seconds == "1969-12-31T23:59:59Z")
        #expect(Timestamp(seconds: 951_782_400).iso8601Seconds == "2000-02-29T00:00:00Z")
        #expect(Timestamp(iso8601: "2026-13-01T00:00:00Z") == nil)
        #expect(Timestamp(iso8601: "yesterday") == nil)
    }
}

@Suite struct RepositoryTests {
    func record(tag: String, seconds: Int64) -> SnapshotRecord {
        SnapshotRecord(
            time: Timestamp(seconds: seconds), host: "h", tags: [tag], program: "test", sources: .init(storage: "/s"),
            manifest: StreamReference(), totals: .init(), errors: [])
    }

    @Test func initRefusesAnExistingRepositoryAndOpenChecksTheFormat() throws {
        let folder = try TemporaryDirectory()
        let path = folder.path + "/repo"
        let repository = try Repository.initialize(at: path)
        #expect(repository.config.compression.level == 2)  // the documented default (docs/FORMAT.md)
        let error = #expect(throws: SnapError.self) { try Repository.initialize(at: path) }
        #expect(error?.code == .repositoryExists)
        #expect(try Repository.open(at: path).config == repository.config)

        let notRepository = #expect(throws: SnapError.self) { try Repository.open(at: folder.path) }
        #expect(notRepository?.code == .notARepository)
        #expect(notRepository?.description.contains(folder.path) == true)

        // A config from a newer format version is refused with a clear message.
        var newer = repository.config
        newer.version = 99
        try JSONEncoder().encode(newer).write(to: URL(fileURLWithPath: path + "/config"))
        let tooNew = #expect(throws: SnapError.self) { try Repository.open(at: path) }
        #expect(tooNew?.code == .unsupportedFormat)
        #expect(tooNew?.description.contains("upgrade snap") == true)
    }

    @Test func recordIdIsTheHashOfItsFile() throws {
        let folder = try TemporaryDirectory()
        let repository = try Repository.initialize(at: folder.path + "/repo")
        let snapshot = try repository.commit(record(tag: "a", seconds: 100))
        let bytes = try Data(contentsOf: URL(fileURLWithPath: folder.path + "/repo/snapshots/\(snapshot.id).json"))
        #expect(ObjectID(hashing: Array(bytes)).hex == snapshot.id)
        #expect(try SnapshotRecord.decode(Array(bytes)) == snapshot.record)
        // Deterministic: the same record encodes to the same bytes.
        #expect(try record(tag: "a", seconds: 100).encoded() == Array(bytes))
    }

    @Test func resolvesLatestPrefixesAndReportsAmbiguity() throws {
        let folder = try TemporaryDirectory()
        let repository = try Repository.initialize(at: folder.path + "/repo")
        #expect(throws: SnapError.self) { try repository.resolve("latest") }
        // Enough snapshots that two ids share their first four hex digits (birthday bound).
        var byPrefix: [String: [String]] = [:]
        var ambiguous: String?
        var index: Int64 = 0
        while ambiguous == nil {
            index += 1
            let id = try repository.commit(record(tag: "t\(index)", seconds: 1000 + index)).id
            byPrefix[String(id.prefix(4)), default: []].append(id)
            if byPrefix[String(id.prefix(4))]!.count == 2 { ambiguous = String(id.prefix(4)) }
        }
        let latest = try repository.resolve("latest")
        #expect(latest.record.tags == ["t\(index)"])
        let pair = byPrefix[ambiguous!]!
        let error = #expect(throws: SnapError.self) { try repository.resolve(ambiguous!) }
        #expect(error?.code == .ambiguous)
        #expect(error?.description.contains(pair[0]) == true && error?.description.contains(pair[1]) == true)
        #expect(try repository.resolve(pair[0]).id == pair[0])
        let unique = try repository.resolve(String(latest.id.prefix(12)))
        #expect(unique.id == latest.id)
        #expect(#expect(throws: SnapError.self) { try repository.resolve("abc") }?.code == .invalidInput)
        #expect(#expect(throws: SnapError.self) { try repository.resolve("zzzz") }?.code == .invalidInput)
    }

    @Test func damagedRecordsAreReportedNotFatal() throws {
        let folder = try TemporaryDirectory()
        let repository = try Repository.initialize(at: folder.path + "/repo")
        let good = try repository.commit(record(tag: "good", seconds: 1))
        let bad = try repository.commit(record(tag: "bad", seconds: 2))
        let path = folder.path + "/repo/snapshots/\(bad.id).json"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path))
        let (snapshots, problems) = try repository.snapshots()
        #expect(snapshots.map(\.id) == [good.id])
        #expect(problems.count == 1 && problems[0].contains(bad.id))
    }
}

@Suite struct TableDataTests {
    /// Parallel restore by default only when the data is spread: two blocks or more, none above
    /// three quarters.
    @Test func parallelRestoreOnlyWhenNoTableHoldsMostOfTheData() {
        let cases: [(entries: Int, largest: Int64, total: Int64, parallel: Bool)] = [
            (0, 0, 0, false),
            (1, 1000, 1000, false),
            (4, 990, 1000, false),  // pgbench: one table is nearly everything
            (3, 751, 1000, false),
            (3, 750, 1000, true),
            (5, 640, 1000, true),  // the benchmark's app database
            (2, 500, 1000, true),
        ]
        for item in cases {
            let data = DatabaseFacts.TableData(
                entries: item.entries, largestBytes: item.largest, totalBytes: item.total)
            #expect(data.worthParallelRestore == item.parallel, "\(item)")
        }
    }
}

@Suite struct StreamReaderTests {
    /// Read ahead on two threads gives the same bytes in order, and a damaged chunk fails the read
    /// in its turn, with the chunks before it delivered, and every read after it.
    @Test func readAheadDeliversInOrderAndStopsAtADamagedChunk() throws {
        let folder = try TemporaryDirectory()
        let repository = try Repository.initialize(at: folder.path + "/repo")
        let writer = try SnapshotWriter(repository: repository)
        let content = pseudoRandomBytes(3 << 20, seed: 11)
        let stream = try writer.storeStream(.database, read: memorySource(content))
        _ = try writer.commit(
            time: Timestamp.now(), host: "h", tags: [], program: "test", sources: .init(storage: nil, database: nil),
            errors: [])
        #expect(stream.chunks.count > 10)

        func readAll(_ reader: StreamReader) -> (bytes: [UInt8], error: (any Error)?) {
            var result: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 10_000)
            while true {
                do {
                    let count = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
                    if count == 0 { return (result, nil) }
                    result += buffer[0..<count]
                } catch {
                    return (result, error)
                }
            }
        }
        let whole = readAll(
            StreamReader(repository: repository, chunks: stream.chunks, size: stream.size, readAhead: 2))
        #expect(whole.error == nil)
        #expect(whole.bytes == content)

        // Damage the seventh chunk's object.
        let damaged = stream.chunks[6]
        let path = repository.path + "/objects/" + String(damaged.hex.prefix(2)) + "/" + damaged.hex
        try Data("not a zstd frame".utf8).write(to: URL(fileURLWithPath: path))
        let reader = StreamReader(repository: repository, chunks: stream.chunks, size: stream.size, readAhead: 2)
        let partial = readAll(reader)
        let before = try stream.chunks[0..<6].reduce(0) { total, id in
            total + (try repository.loadObject(id, decompressor: ZstdDecompressor())).count
        }
        #expect(partial.bytes == Array(content[0..<before]))
        let error = try #require(partial.error as? SnapError)
        #expect(error.code == .corrupt)
        #expect(error.description.contains(damaged.hex))
        var buffer = [UInt8](repeating: 0, count: 100)
        #expect(throws: SnapError.self) { try buffer.withUnsafeMutableBytes { try reader.read(into: $0) } }

        // A reader let go waits for its read-ahead threads: none is still loading once it is gone
        // (a restore that fails goes on to report and exit). The third chunk's object is a FIFO:
        // the thread that loads it waits in open, then in read, until the test closes the other end.
        let stuck = stream.chunks[2]
        let fifo = repository.path + "/objects/" + String(stuck.hex.prefix(2)) + "/" + stuck.hex
        try FileManager.default.removeItem(atPath: fifo)
        #expect(mkfifo(fifo, 0o600) == 0)
        let letGo = DispatchSemaphore(value: 0)
        let released = Mutex(false)
        let reading = BackgroundWork {
            do {
                let reader = StreamReader(
                    repository: repository, chunks: stream.chunks, size: stream.size, readAhead: 2)
                var buffer = [UInt8](repeating: 0, count: 100)
                _ = try buffer.withUnsafeMutableBytes { try reader.read(into: $0) }
                letGo.wait()
            }  // the reader is released here
            released.withLock { $0 = true }
        }
        // A non-blocking open for writing succeeds once a thread has the FIFO open for reading.
        var otherEnd: Int32 = -1
        for _ in 0..<1000 where otherEnd < 0 {
            otherEnd = open(fifo, O_WRONLY | O_NONBLOCK)
            if otherEnd < 0 { usleep(10_000) }
        }
        try #require(otherEnd >= 0, "no read-ahead thread reached the third chunk")
        letGo.signal()
        usleep(300_000)
        #expect(!released.withLock { $0 }, "the reader was released while a read-ahead thread was still loading")
        close(otherEnd)
        try reading.wait()
        #expect(released.withLock { $0 })
    }
}
