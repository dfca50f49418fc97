import Foundation
import SnapCore
import SnapPostgres
import SnapTestSupport
import Synchronization
import Testing

@Suite("DumpRestore", needsServer)
struct RestoreTests {
    /// A source database and its dump bytes and facts, made once per test.
    struct Source {
        var database: String
        var bytes: [UInt8]
        var facts: DatabaseFacts
        var plain: String
    }

    func dumpSource(_ cluster: TestCluster, prefix: String) throws -> Source {
        let database = try makeSourceDatabase(cluster, prefix: prefix)
        let (bytes, session) = try dumpWhole(cluster, database)
        return Source(
            database: database, bytes: bytes, facts: session.facts, plain: try cluster.pgDumpPlain(database: database))
    }

    @Test func emptyTargetPassesAndEachKindOfObjectIsFound() throws {
        let cluster = try TestCluster.start()
        let cases: [(sql: String, found: String)] = [
            ("CREATE TABLE t1 (x int)", "table public.t1"),
            ("CREATE VIEW v1 AS SELECT 1 AS x", "view public.v1"),
            ("CREATE SEQUENCE s1", "sequence public.s1"),
            ("CREATE FUNCTION f1() RETURNS int LANGUAGE sql AS 'SELECT 1'", "function public.f1()"),
            ("CREATE TYPE e1 AS ENUM ('a')", "type public.e1"),
            ("CREATE SCHEMA app", "schema app"),
            ("SELECT lo_create(0)", "large object"),
        ]
        for (sql, found) in cases {
            let name = cluster.uniqueDatabaseName("target")
            try cluster.createDatabase(name)
            defer { try? cluster.dropDatabase(name) }
            let restore = try DumpRestore(conninfo: cluster.conninfo(database: name))
            #expect(try restore.userObjects().isEmpty)
            try restore.requireEmpty()

            try cluster.psql(sql, database: name)
            let objects = try restore.userObjects()
            #expect(objects.contains { $0.hasPrefix(found) }, "\(sql): \(objects)")
            let error = try #require(throws: PostgresError.self) { try restore.requireEmpty() }
            #expect(error.code == .targetNotEmpty)
            #expect(error.description.contains(found))
            #expect(error.description.contains("\"\(name)\""))
            #expect(error.description.contains("--clean"))
        }
        // An extension's objects are not the user's: a dump re-creates it IF NOT EXISTS.
        let name = cluster.uniqueDatabaseName("ext")
        try cluster.createDatabase(name)
        defer { try? cluster.dropDatabase(name) }
        if (try? cluster.psql("CREATE EXTENSION IF NOT EXISTS pg_trgm", database: name)) != nil {
            #expect(try DumpRestore(conninfo: cluster.conninfo(database: name)).userObjects().isEmpty)
        }
    }

    @Test func streamedRestoreRecreatesTheSourceAndSummarizesIt() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "stream")
        let target = cluster.uniqueDatabaseName("streamed")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(target)
        }
        let restore = try DumpRestore(
            conninfo: cluster.conninfo(database: target), options: RestoreOptions(dumpFacts: source.facts))
        try restore.requireEmpty()
        let reader = ByteReader(source.bytes)
        let summary = try restore.restore(reading: reader.read)
        #expect(summary == RestoreSummary(database: target, tables: 2, rows: 620))
        #expect(try cluster.pgDumpPlain(database: target) == source.plain)
    }

    @Test func restoreStraightFromARunningDump() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "live")
        let target = cluster.uniqueDatabaseName("livecopy")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        let session = try DumpSession(conninfo: cluster.conninfo(database: source))
        let restore = try DumpRestore(
            conninfo: cluster.conninfo(database: target, password: cluster.password),
            options: RestoreOptions(dumpFacts: session.facts))
        let summary = try restore.restore(reading: session.read)
        try session.finish()
        #expect(summary.tables == 2)
        #expect(summary.rows == 620)
        #expect(try cluster.pgDumpPlain(database: target) == (try cluster.pgDumpPlain(database: source)))
    }

    @Test func parallelRestoreFromAFileAndFromASpooledStream() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "jobs")
        let fromFile = cluster.uniqueDatabaseName("jobsfile")
        let fromStream = cluster.uniqueDatabaseName("jobsstream")
        try cluster.createDatabase(fromFile)
        try cluster.createDatabase(fromStream)
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(fromFile)
            try? cluster.dropDatabase(fromStream)
        }
        let folder = try TemporaryDirectory()
        let file = try folder.write("db.dump", source.bytes)
        let options = RestoreOptions(jobs: 2, spoolDirectory: folder.path)

        let summary = try DumpRestore(conninfo: cluster.conninfo(database: fromFile), options: options).restore(
            fromFile: file)
        #expect(summary.tables == 2 && summary.rows == 620)
        #expect(try cluster.pgDumpPlain(database: fromFile) == source.plain)

        let spooled = try DumpRestore(conninfo: cluster.conninfo(database: fromStream), options: options)
            .restore(reading: ByteReader(source.bytes).read)
        #expect(spooled.rows == 620)
        #expect(try cluster.pgDumpPlain(database: fromStream) == source.plain)
        // The temporary copy is gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["db.dump"])
    }

    /// A temporary folder without room for the copy: the restore streams with one job, says so,
    /// and still gives the source back.
    @Test func parallelRestoreWithoutRoomStreamsWithOneJobAndSaysSo() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "room")
        let target = cluster.uniqueDatabaseName("roomless")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(target)
        }
        let folder = try TemporaryDirectory()
        let heard = Mutex<[String]>([])
        var options = RestoreOptions(jobs: 2, spoolDirectory: folder.path)
        // Said before the restore runs, so that a restore that then fails has said it too.
        options.onNote = { note in heard.withLock { $0.append(note) } }
        let restore = try DumpRestore(conninfo: cluster.conninfo(database: target), options: options)
        // A dump larger than any disk.
        let summary = try restore.restore(size: 1 << 60, reading: ByteReader(source.bytes).read)
        #expect(summary.notes.count == 1)
        #expect(summary.notes.first?.contains("restoring with one job") == true, "\(summary.notes)")
        #expect(heard.withLock { $0 } == summary.notes)
        #expect(summary.jobs == 1)
        #expect(summary.notes.first?.contains(folder.path) == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path).isEmpty)
        #expect(try cluster.pgDumpPlain(database: target) == source.plain)
    }

    @Test func replacementKeepsTheEncodingAndOwnerAndSwapsInOnlyWhenLoaded() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "clean")
        let target = cluster.uniqueDatabaseName("cleaned")
        let owner = cluster.uniqueDatabaseName("owner")
        try cluster.psql("CREATE ROLE \(owner)")
        try cluster.createDatabase(
            target, options: "TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' OWNER \(owner)")
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(target)
            _ = try? cluster.psql("DROP ROLE IF EXISTS \(owner)")
        }
        try cluster.psql("CREATE TABLE items (id int); INSERT INTO items VALUES (1);", database: target)
        // Another session on the target: ended at the swap, not before.
        let bystander = try PostgresConnection(conninfo: cluster.conninfo(database: target))

        let restore = try DumpRestore(conninfo: cluster.conninfo(database: target))
        #expect(throws: PostgresError.self) { try restore.requireEmpty() }
        try restore.prepareReplacement()
        #expect(try restore.userObjects().isEmpty)
        #expect(
            try restore.connection.value(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()") == "LATIN1")
        #expect(
            try restore.connection.value(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()") == owner)

        let summary = try restore.restore(reading: ByteReader(source.bytes).read)
        #expect(summary.rows == 620)
        #expect(summary.replaced)
        // Loaded, not yet swapped: the target still holds its own table, and its session lives.
        #expect(try cluster.psql("SELECT count(*) FROM items", database: target) == "1")
        #expect(try bystander.value("SELECT 1") == "1")
        let ended = try restore.commit()
        #expect(ended.count == 1)
        #expect(throws: PostgresError.self) { try bystander.execute("SELECT 1") }
        // pg_dump writes the database's encoding into the plain dump: the only expected difference.
        let restoredPlain = try cluster.pgDumpPlain(database: target)
        #expect(restoredPlain.contains("SET client_encoding = 'LATIN1';"))
        #expect(restoredPlain.replacingOccurrences(of: "'LATIN1'", with: "'UTF8'") == source.plain)
        #expect(
            try cluster.psql(
                "SELECT count(*) FROM pg_database WHERE datname ~ '^snap_(restore|replaced)_[0-9a-f]+_\(target)$'")
                == "0")
    }

    @Test func pgRestoreFailureNamesTheStepAndReason() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "clash")
        let target = cluster.uniqueDatabaseName("clashing")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(target)
        }
        try cluster.psql("CREATE TABLE items (x int)", database: target)
        let restore = try DumpRestore(conninfo: cluster.conninfo(database: target))
        let error = try #require(throws: PostgresError.self) {
            try restore.restore(reading: ByteReader(source.bytes).read)
        }
        #expect(error.code == .restoreFailed)
        #expect(error.description.hasPrefix("pg_restore into database \"\(target)\""))
        #expect(error.description.contains("already exists"))
        #expect(!error.description.contains("\n"))
    }

    @Test func failingDumpSourceStopsPgRestore() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "broken")
        let target = cluster.uniqueDatabaseName("halfway")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(target)
        }
        let reader = ByteReader(source.bytes)
        reader.failAfter = source.bytes.count / 2
        let restore = try DumpRestore(conninfo: cluster.conninfo(database: target))
        let error = try #require(throws: PostgresError.self) { try restore.restore(reading: reader.read) }
        #expect(error.code == .restoreFailed)
        #expect(error.description.contains("simulated repository read failure"))
        #expect(error.description.contains("partly restored"))
    }

    @Test func archiveNewerThanPgRestoreIsAVersionError() throws {
        let cluster = try TestCluster.start()
        let source = try dumpSource(cluster, prefix: "future")
        let target = cluster.uniqueDatabaseName("past")
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source.database)
            try? cluster.dropDatabase(target)
        }
        // The header is "PGDMP", then the archive format's major, minor and revision bytes.
        var bytes = source.bytes
        bytes[6] = 99
        var facts = source.facts
        facts.serverVersion = "99.1"
        facts.serverVersionNumber = 990001
        facts.pgDumpVersion = "99.1"
        let restore = try DumpRestore(
            conninfo: cluster.conninfo(database: target), options: RestoreOptions(dumpFacts: facts))
        let error = try #require(throws: PostgresError.self) { try restore.restore(reading: ByteReader(bytes).read) }
        #expect(error.code == .versionMismatch)
        #expect(error.description.contains("unsupported version"))
        #expect(error.description.contains("pg_dump 99.1"))
        #expect(error.description.contains("PostgreSQL \(cluster.majorVersion)."))
        #expect(error.description.contains("postgresql-client-99"))
    }

    @Test func noOwnerAndNoACLLeaveOwnersAndGrantsOut() throws {
        let cluster = try TestCluster.start()
        let owner = cluster.uniqueDatabaseName("tableowner")
        let reader = cluster.uniqueDatabaseName("reader")
        let source = cluster.uniqueDatabaseName("owned")
        let kept = cluster.uniqueDatabaseName("kept")
        let stripped = cluster.uniqueDatabaseName("stripped")
        try cluster.psql("CREATE ROLE \(owner); CREATE ROLE \(reader);")
        for name in [source, kept, stripped] { try cluster.createDatabase(name) }
        defer {
            for name in [source, kept, stripped] { try? cluster.dropDatabase(name) }
            _ = try? cluster.psql("DROP ROLE IF EXISTS \(owner); DROP ROLE IF EXISTS \(reader);")
        }
        try cluster.psql(
            "CREATE TABLE secrets (x int); ALTER TABLE secrets OWNER TO \(owner); GRANT SELECT ON secrets TO \(reader);",
            database: source)
        let bytes = try dumpWhole(cluster, source).bytes

        let query =
            "SELECT pg_get_userbyid(relowner) || ' ' || has_table_privilege('\(reader)', 'secrets', 'SELECT') FROM pg_class WHERE relname = 'secrets'"
        _ = try DumpRestore(conninfo: cluster.conninfo(database: kept)).restore(reading: ByteReader(bytes).read)
        #expect(try cluster.psql(query, database: kept) == "\(owner) true")
        _ = try DumpRestore(
            conninfo: cluster.conninfo(database: stripped), options: RestoreOptions(noOwner: true, noACL: true)
        )
        .restore(reading: ByteReader(bytes).read)
        #expect(try cluster.psql(query, database: stripped) == "\(cluster.superuser) false")
    }

    @Test func summaryCountsTablesAndRowsAfterAnalyze() throws {
        let cluster = try TestCluster.start()
        let source = cluster.uniqueDatabaseName("counted")
        let target = cluster.uniqueDatabaseName("recount")
        try cluster.createDatabase(source)
        try cluster.createDatabase(target)
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        try cluster.psql(
            """
            CREATE TABLE empty_one (x int);
            CREATE TABLE small AS SELECT g FROM generate_series(1, 7) g;
            CREATE TABLE bigger AS SELECT g FROM generate_series(1, 4321) g;
            CREATE TABLE measurements (at date, v int) PARTITION BY RANGE (at);
            CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
            CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            INSERT INTO measurements SELECT date '2024-06-01' + g, g FROM generate_series(1, 300) g;
            CREATE SCHEMA other;
            CREATE TABLE other.more AS SELECT g FROM generate_series(1, 11) g;
            """, database: source)
        let session = try DumpSession(conninfo: cluster.conninfo(database: source))
        let summary = try DumpRestore(conninfo: cluster.conninfo(database: target)).restore(reading: session.read)
        try session.finish()
        // empty_one, small, bigger, measurements (its partitions not counted again), other.more.
        #expect(summary.tables == 5)
        #expect(summary.rows == 7 + 4321 + 300 + 11)
        // ANALYZE ran: the planner has statistics.
        #expect(try cluster.psql("SELECT count(*) FROM pg_stats WHERE tablename = 'bigger'", database: target) == "1")
    }
}
