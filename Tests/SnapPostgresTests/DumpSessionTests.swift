import Foundation
import SnapCore
import SnapPostgres
import SnapTestSupport
import Testing

@Suite("DumpSession", needsServer)
struct DumpSessionTests {
    @Test func factsDescribeTheDumpedDatabase() throws {
        let cluster = try TestCluster.start()
        let database = cluster.uniqueDatabaseName("facts")
        try cluster.createDatabase(database, options: "TEMPLATE template0 ENCODING 'LATIN1'")
        defer { try? cluster.dropDatabase(database) }
        try cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g", database: database)

        let session = try DumpSession(conninfo: cluster.conninfo(database: database))
        let facts = session.facts
        #expect(facts.name == database)
        #expect(facts.host == cluster.socketDirectory)
        #expect(facts.port == String(cluster.port))
        #expect(facts.user == cluster.superuser)
        #expect(facts.encoding == "LATIN1")  // the database's, not our UTF-8 client encoding
        #expect(facts.serverVersion == (try cluster.psql("SHOW server_version")))
        #expect(facts.serverVersionNumber == Int(try cluster.psql("SHOW server_version_num")))
        #expect(facts.systemIdentifier == (try cluster.psql("SELECT system_identifier FROM pg_control_system()")))
        #expect(!facts.inRecovery)
        #expect(facts.walPosition.wholeMatch(of: /[0-9A-F]+\/[0-9A-F]+/) != nil, "\(facts.walPosition)")
        let size = Int64(try cluster.psql("SELECT pg_database_size('\(database)')")) ?? 0
        #expect(facts.sizeBytes > 1_000_000 && abs(facts.sizeBytes - size) < 1_000_000)
        #expect(facts.pgDumpVersion.hasPrefix("\(cluster.majorVersion)."))
        #expect(session.pgDump.versionNumber / 10000 == cluster.majorVersion)
        #expect(!session.snapshotID.isEmpty)

        _ = try readAll(session)
        try session.finish()
    }

    @Test func factsNeverHoldThePassword() throws {
        let cluster = try TestCluster.start()
        let session = try DumpSession(conninfo: cluster.conninfo(database: "postgres", password: cluster.password))
        #expect(session.facts.host == "127.0.0.1")
        #expect(session.facts.user == cluster.passwordUser)
        let json = String(decoding: try JSONEncoder().encode(session.facts), as: UTF8.self)
        #expect(!json.contains(cluster.password))
        // pg_dump logged in over TCP with scram: the password reached it through its environment.
        #expect(try readAll(session).starts(with: Array("PGDMP".utf8)))
        try session.finish()
    }

    @Test func streamRestoresToAnIdenticalDatabase() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster)
        let target = cluster.uniqueDatabaseName("copy")
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        let (bytes, session) = try dumpWhole(cluster, source)
        #expect(session.bytesRead == UInt64(bytes.count))
        #expect(bytes.starts(with: Array("PGDMP".utf8)))

        let folder = try TemporaryDirectory()
        let file = try folder.write("db.dump", bytes)
        let list = try cluster.runClient("pg_restore", ["-l", file])
        #expect(list.succeeded, "\(list.stderr)")
        #expect(list.stdout.contains("TABLE DATA public items"))
        #expect(list.stdout.contains("LARGE OBJECT") || list.stdout.contains("BLOB"))

        try cluster.createDatabase(target)
        let restored = try cluster.runClient("pg_restore", ["--exit-on-error", "-d", target, file])
        #expect(restored.succeeded, "\(restored.stderr)")
        let expected = try cluster.pgDumpPlain(database: source)
        #expect(expected.contains("CREATE TABLE public.items"))
        #expect(try cluster.pgDumpPlain(database: target) == expected)
    }

    @Test func dumpShowsTheExportedSnapshotNotLaterChanges() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "snapshot")
        let target = cluster.uniqueDatabaseName("snapcopy")
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        let session = try DumpSession(conninfo: cluster.conninfo(database: source))
        // Committed after the snapshot was exported: must not be in the dump.
        try cluster.psql("INSERT INTO items (name) VALUES ('late'); CREATE TABLE later (x int);", database: source)
        let bytes = try readAll(session)
        try session.finish()

        try cluster.createDatabase(target)
        let folder = try TemporaryDirectory()
        let restored = try cluster.runClient(
            "pg_restore", ["--exit-on-error", "-d", target, try folder.write("d", bytes)])
        #expect(restored.succeeded, "\(restored.stderr)")
        #expect(try cluster.psql("SELECT count(*) FROM items", database: target) == "500")
        #expect(try cluster.psql("SELECT count(*) FROM items", database: source) == "501")
        #expect(try cluster.psql("SELECT to_regclass('later') IS NULL", database: target) == "t")
    }

    @Test func failingPgDumpMakesFinishThrowWithItsReason() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        let fake = try script(
            folder, "pg_dump",
            """
            printf '%s\\n' "$@" > "\(folder.path)/arguments"
            env > "\(folder.path)/environment"
            printf 'PGDMP partial'
            echo "pg_dump: error: query failed: ERROR:  simulated failure in the snap test" >&2
            echo "pg_dump: detail: Query was: LOCK TABLE public.items IN ACCESS SHARE MODE" >&2
            exit 1
            """)
        let session = try DumpSession(
            conninfo: cluster.conninfo(database: "postgres", password: cluster.password),
            options: DumpOptions(environment: environment(adding: [PostgresTools.testPgDumpVariable: fake])))
        #expect(try readAll(session) == Array("PGDMP partial".utf8))
        let error = try #require(throws: PostgresError.self) { try session.finish() }
        #expect(error.code == .dumpFailed)
        #expect(error.description.contains("simulated failure in the snap test"))
        #expect(error.description.contains("exit status 1"))
        #expect(error.description.contains("\"postgres\""))
        #expect(!error.description.contains("Query was"))

        // What pg_dump was given: the snapshot and format on argv, the secret only in its environment.
        let arguments = try String(contentsOfFile: folder.file("arguments"), encoding: .utf8)
        #expect(arguments == "--snapshot=\(session.snapshotID)\n-Fc\n-Z0\n--no-password\n")
        #expect(!arguments.contains(cluster.password))
        let environment = try String(contentsOfFile: folder.file("environment"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        #expect(environment.contains("PGPASSWORD=\(cluster.password)"))
        #expect(environment.contains("PGHOST=127.0.0.1"))
        #expect(environment.contains("PGPORT=\(cluster.port)"))
        #expect(environment.contains("PGDATABASE=postgres"))
        #expect(environment.contains("PGUSER=\(cluster.passwordUser)"))
    }

    @Test func pgDumpKilledBySignalIsAFailure() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        let fake = try script(folder, "pg_dump", "printf 'PGDMP some bytes'\nkill -KILL $$")
        let session = try DumpSession(
            conninfo: cluster.conninfo(database: "postgres"),
            options: DumpOptions(environment: environment(adding: [PostgresTools.testPgDumpVariable: fake])))
        #expect(try readAll(session).count == "PGDMP some bytes".utf8.count)
        let error = try #require(throws: PostgresError.self) { try session.finish() }
        #expect(error.code == .dumpFailed)
        #expect(error.description.contains("signal 9"))
    }

    @Test func emptyOutputIsAFailure() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        let fake = try script(folder, "pg_dump", "exit 0")
        let session = try DumpSession(
            conninfo: cluster.conninfo(database: "postgres"),
            options: DumpOptions(environment: environment(adding: [PostgresTools.testPgDumpVariable: fake])))
        #expect(try readAll(session).isEmpty)
        let error = try #require(throws: PostgresError.self) { try session.finish() }
        #expect(error.description.contains("produced no output"))
    }

    @Test func stderrIsBoundedAndNeverBlocksTheStream() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        // 400 KB of stderr before any output: more than any socket buffer, so a reader that did not
        // drain stderr while waiting for stdout would hang here.
        let fake = try script(
            folder, "pg_dump",
            """
            i=0
            while [ $i -lt 4000 ]; do echo "pg_dump: warning: noise line $i padded to about one hundred bytes ......................." >&2; i=$((i+1)); done
            printf 'PGDMP after the noise'
            echo "pg_dump: error: the last word" >&2
            exit 3
            """)
        let session = try DumpSession(
            conninfo: cluster.conninfo(database: "postgres"),
            options: DumpOptions(
                environment: environment(adding: [PostgresTools.testPgDumpVariable: fake]), stderrLimit: 8 * 1024))
        #expect(try readAll(session) == Array("PGDMP after the noise".utf8))
        let error = try #require(throws: PostgresError.self) { try session.finish() }
        #expect(error.description.contains("the last word"))
        #expect(error.description.contains("exit status 3"))
        #expect(error.description.count < 1000)
    }

    /// While the dump streams, pg_dump and the thread reading it run on one CPU; afterwards the
    /// thread has its CPUs back. SNAP_NO_CPU_PAIRING turns it off.
    @Test(.enabled(if: allowedCPUs("self").count >= 2)) func pgDumpAndItsReaderShareOneCPU() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        // Reports the CPUs it may use once the pairing (done right after the start) is in place.
        let fake = try script(
            folder, "pg_dump",
            """
            sleep 2
            printf 'PGDMP '
            grep Cpus_allowed_list /proc/$$/status
            """)
        for pairing in [true, false] {
            var extra = [PostgresTools.testPgDumpVariable: fake]
            if !pairing { extra["SNAP_NO_CPU_PAIRING"] = "1" }
            let before = allowedCPUs("thread-self")
            let session = try DumpSession(
                conninfo: cluster.conninfo(database: "postgres"),
                options: DumpOptions(environment: environment(adding: extra)))
            var buffer = [UInt8](repeating: 0, count: 4096)
            var output: [UInt8] = []
            while true {
                let count = try buffer.withUnsafeMutableBytes { try session.read(into: $0) }
                if count == 0 { break }
                output += buffer[0..<count]
            }
            let during = allowedCPUs("thread-self")
            try session.finish()
            let child = String(decoding: output, as: UTF8.self)
            let childCPUs = parseCPUList(String(child.split(separator: "\t").last ?? ""))
            if pairing {
                #expect(during.count == 1, "\(during)")
                #expect(childCPUs == during, "\(child)")
            } else {
                #expect(during == before)
                #expect(childCPUs == before, "\(child)")
            }
            #expect(allowedCPUs("thread-self") == before)
        }
    }

    @Test func finishingBeforeTheEndIsAFailure() throws {
        let cluster = try TestCluster.start()
        let source = try makeSourceDatabase(cluster, prefix: "early", rows: 20000)
        defer { try? cluster.dropDatabase(source) }
        let session = try DumpSession(conninfo: cluster.conninfo(database: source))
        var buffer = [UInt8](repeating: 0, count: 100)
        #expect(try buffer.withUnsafeMutableBytes { try session.read(into: $0) } > 0)
        let error = try #require(throws: PostgresError.self) { try session.finish() }
        #expect(error.code == .dumpFailed)
        // Once finished, reads say "end" and a second finish does nothing.
        #expect(try buffer.withUnsafeMutableBytes { try session.read(into: $0) } == 0)
        try session.finish()
    }

    @Test func pgDumpOlderThanTheServerIsRefusedUpFront() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        try script(folder, "pg_dump", "echo 'pg_dump (PostgreSQL) 9.6.24'")
        let error = try #require(throws: PostgresError.self) {
            try DumpSession(
                conninfo: cluster.conninfo(database: "postgres"),
                options: DumpOptions(environment: environment(adding: [PostgresTools.binFolderVariable: folder.path])))
        }
        #expect(error.code == .versionMismatch)
        #expect(error.description.contains("9.6.24"))
        #expect(error.description.contains("PostgreSQL \(cluster.majorVersion)."))
        #expect(error.description.contains("postgresql-client-\(cluster.majorVersion)"))
    }

    @Test func binFolderOverrideMustHoldTheTool() throws {
        let cluster = try TestCluster.start()
        let error = try #require(throws: PostgresError.self) {
            try DumpSession(
                conninfo: cluster.conninfo(database: "postgres"),
                options: DumpOptions(
                    environment: environment(adding: [PostgresTools.binFolderVariable: "/nonexistent/bin"])))
        }
        #expect(error.code == .toolNotFound)
        #expect(error.description.contains("SNAP_PG_BIN=/nonexistent/bin"))

        // Pointing it at the real folder works and uses that pg_dump.
        let tool = try PostgresTools.locate(
            "pg_dump", serverVersionNumber: nil, requireServerMajor: false,
            environment: environment(adding: [PostgresTools.binFolderVariable: cluster.binDirectory]))
        #expect(tool.path == cluster.binDirectory + "/pg_dump")
        #expect(tool.majorVersion == String(cluster.majorVersion))
    }
}

/// The CPUs /proc/<who>/status allows ("self" the process, "thread-self" the calling thread).
func allowedCPUs(_ who: String) -> Set<Int> {
    let status = (try? String(contentsOfFile: "/proc/\(who)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") } ?? ""
    return parseCPUList(String(line.split(separator: "\t").last ?? ""))
}

/// "0-2,5" -> [0, 1, 2, 5].
func parseCPUList(_ text: String) -> Set<Int> {
    var cpus = Set<Int>()
    for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
        let bounds = part.split(separator: "-").compactMap { Int($0) }
        if bounds.count == 2 {
            cpus.formUnion(bounds[0]...bounds[1])
        } else if let one = bounds.first {
            cpus.insert(one)
        }
    }
    return cpus
}
