import Foundation
import SnapCore
import SnapTestSupport
import Testing

/// Skips where PostgreSQL is not installed, except under CI, where the suite runs and fails.
private let needsServer = Testing.ConditionTrait.enabled(
    if: TestCluster.isAvailable, Comment(rawValue: TestCluster.unavailableReason))

/// A database with awkward content: several schemas, non-ASCII identifiers, bytea, jsonb, arrays,
/// numeric, timestamps, text with newlines, tabs and backslashes, sequences, views, functions,
/// triggers and a large object.
func makeAwkwardDatabase(_ cluster: TestCluster) throws -> String {
    let name = cluster.uniqueDatabaseName("awkward")
    try cluster.createDatabase(name)
    try cluster.psql(
        #"""
        CREATE SCHEMA billing;
        CREATE SCHEMA "Ünïcødé schéma";
        CREATE SEQUENCE billing.invoice_numbers START 1000;
        CREATE TABLE billing.invoices (
            id bigint PRIMARY KEY DEFAULT nextval('billing.invoice_numbers'),
            amount numeric(20, 6) NOT NULL,
            issued timestamptz NOT NULL,
            due date,
            lines jsonb,
            tags text[],
            scan bytea,
            memo text
        );
        INSERT INTO billing.invoices (amount, issued, due, lines, tags, scan, memo)
        SELECT g * 1.000001, '2024-02-29 12:34:56.789+00'::timestamptz + g * interval '1 hour', '2024-03-31',
               jsonb_build_object('n', g, 'items', jsonb_build_array('a', g, null, true)),
               ARRAY['tag' || g, 'ä€', NULL], decode(lpad(to_hex(g), 8, '0') || 'deadbeef00', 'hex'),
               E'line one\nline\ttwo \\ backslash ' || g
        FROM generate_series(1, 3000) g;
        CREATE TABLE "Ünïcødé schéma"."Tâble ñame" ("Çolumn ✓" text, n int);
        INSERT INTO "Ünïcødé schéma"."Tâble ñame" VALUES ('日本語', 1), (E'tab\there', 2), ('', 3), (NULL, 4);
        CREATE TABLE public.audit (id serial PRIMARY KEY, invoice bigint, at timestamptz DEFAULT '2020-01-01');
        CREATE FUNCTION billing.log_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.audit (invoice) VALUES (NEW.id); RETURN NEW; END $$;
        CREATE TRIGGER invoices_audit AFTER INSERT ON billing.invoices FOR EACH ROW EXECUTE FUNCTION billing.log_invoice();
        CREATE VIEW billing.big_invoices AS SELECT id, amount FROM billing.invoices WHERE amount > 100;
        SELECT lo_from_bytea(424242, decode('00ff00ff', 'hex') || convert_to(' large object', 'UTF8'));
        """#, database: name)
    return name
}

@Suite(.serialized, needsServer) struct DatabaseSnapshotTests {
    let cluster: TestCluster

    init() throws { cluster = try TestCluster.start() }

    private func dump(_ database: String) throws -> String { try cluster.pgDumpPlain(database: database) }

    @Test func snapshotChangeSnapshotRestoresBothExactly() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let source = try makeAwkwardDatabase(cluster)
        try snap("--repo", repo, "init")

        let first = try snap("--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--tag", "one")
        #expect(first.status == 0, "\(first.stderr)")
        let dumpAtFirst = try dump(source)

        try cluster.psql(
            """
            INSERT INTO billing.invoices (amount, issued) VALUES (1.5, now());
            UPDATE billing.invoices SET memo = 'changed' WHERE id % 100 = 0;
            DELETE FROM billing.invoices WHERE id % 333 = 0;
            CREATE TABLE public.later (x int);
            """, database: source)
        let second = try snap("--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--json")
        #expect(second.status == 0, "\(second.stderr)")
        let dumpAtSecond = try dump(source)
        #expect(dumpAtFirst != dumpAtSecond)

        // The record carries the facts, never a password or connection string.
        let shown = try parseJSON(try snap("--repo", repo, "show", "latest", "--json").stdout) as? [String: Any]
        let facts = shown?["database"] as? [String: Any]
        #expect(facts?["name"] as? String == source)
        #expect((facts?["server_version_num"] as? Int ?? 0) >= 150_000)
        #expect((facts?["wal_position"] as? String)?.contains("/") == true)
        #expect((facts?["system_identifier"] as? String)?.isEmpty == false)
        #expect(facts?["encoding"] as? String == "UTF8")
        #expect((facts?["size_bytes"] as? Int ?? 0) > 0)

        for (snapshotID, expected) in [(first.stdout, dumpAtFirst), (try idFrom(second.stdout), dumpAtSecond)] {
            let target = cluster.uniqueDatabaseName("restored")
            try cluster.createDatabase(target)
            let restore = try snap(
                "--repo", repo, "restore", snapshotID.trimmingCharacters(in: .whitespacesAndNewlines),
                "--db", cluster.conninfo(database: target))
            #expect(restore.status == 0, "\(restore.stderr)")
            #expect(restore.stdout.contains("tables"))
            #expect(try dump(target) == expected)
        }
    }

    @Test func cleanRestoreReplacesAChangedDatabaseAndJobsTwoWorks() throws {
        let (folder, repo, source) = try snapshotOfAwkwardDatabase()
        defer { withExtendedLifetime(folder) {} }
        let expected = try dump(source)

        // A target that has moved on: changed rows and a table created after the snapshot.
        try cluster.psql(
            "UPDATE billing.invoices SET amount = 0; CREATE TABLE public.newer (x int); INSERT INTO public.newer VALUES (1);",
            database: source)
        let refused = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: source))
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("--clean"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1)
        #expect(
            try cluster.psql("SELECT count(*) FROM public.newer", database: source) == "1",
            "refused restore changed the target")

        try cluster.psql("ALTER DATABASE \(source) CONNECTION LIMIT 50")
        // What a restore killed with SIGKILL between its create and its rename leaves behind.
        let leftover = "snap_restore_0badc0de_\(source)"
        try cluster.createDatabase(leftover)
        defer { try? cluster.dropDatabase(leftover) }
        let clean = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: source), "--clean", "--jobs", "2")
        #expect(clean.status == 0, "\(clean.stderr)")
        #expect(try dump(source) == expected)
        // The database itself comes back as it was, under its own name.
        #expect(try cluster.psql("SELECT datconnlimit FROM pg_database WHERE datname = '\(source)'") == "50")
        #expect(try ownReplacements(of: source) == "1", "only the leftover, not this run's replacement")
        // The leftover is named, and kept: snap did not create it in this run.
        #expect(clean.stderr.contains("snap: note: ") && clean.stderr.contains(leftover), "\(clean.stderr)")
        #expect(try cluster.psql("SELECT count(*) FROM pg_database WHERE datname = '\(leftover)'") == "1")
    }

    /// A new repository (in `folder`) holding one snapshot of a new awkward database, `source`.
    private func snapshotOfAwkwardDatabase() throws -> (folder: TemporaryDirectory, repo: String, source: String) {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let source = try makeAwkwardDatabase(cluster)
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--db", cluster.conninfo(database: source)).status == 0)
        return (folder, repo, source)
    }

    /// Replacement databases (`snap_restore_<hex>_<name>`) of `name` on the cluster, as a count:
    /// only this test's own, since tests beside it run restores of their own.
    private func ownReplacements(of name: String) throws -> String {
        try cluster.psql("SELECT count(*) FROM pg_database WHERE datname ~ '^snap_restore_[0-9a-f]+_\(name)$'")
    }

    /// --clean creates the replacement before it drops anything: a role that owns its database
    /// but may not create databases (a common app role) gets an error and keeps its database.
    /// And --clean never falls back to libpq's default database.
    @Test func cleanRestoreChangesNothingWhenItCannotRecreate() throws {
        let (folder, repo, _) = try snapshotOfAwkwardDatabase()
        defer { withExtendedLifetime(folder) {} }

        let role = cluster.uniqueDatabaseName("app_role")
        let target = cluster.uniqueDatabaseName("app")
        try cluster.psql("CREATE ROLE \(role) LOGIN NOCREATEDB")
        try cluster.createDatabase(target, options: "OWNER \(role)")
        try cluster.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42);", database: target)
        defer {
            try? cluster.dropDatabase(target)
            _ = try? cluster.psql("DROP ROLE IF EXISTS \(role)")
        }
        let refused = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target, user: role), "--clean")
        #expect(refused.status == 1)
        #expect(
            refused.stderr.contains("nothing was changed") && refused.stderr.contains("CREATEDB"), "\(refused.stderr)")
        #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        #expect(try cluster.psql("SELECT x FROM kept", database: target) == "42")
        #expect(try ownReplacements(of: target) == "0")

        for db in [nil, "", "host=\(cluster.socketDirectory) user=\(role)", "postgresql://\(role)@localhost"] {
            let unnamed = try snap(
                ["--repo", repo, "restore", "latest", "--clean"] + (db.map { ["--db", $0] } ?? []),
                environment: ["PGDATABASE": "", "PGSERVICE": ""])
            #expect(unnamed.status == 2, "\(db ?? "no --db"): \(unnamed.stderr)")
            #expect(unnamed.stderr.contains("--db"), "\(unnamed.stderr)")
        }
    }

    /// Without `--db`, or with an empty one, libpq's environment decides, as for psql; a bare name
    /// is a database name, the rest still from the environment. Run in a child: the test
    /// process's own environment is shared with the tests running beside this one (and setenv
    /// while another thread reads it can crash the process).
    @Test func withoutDbTheEnvironmentDecidesLikePsql() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let database = cluster.uniqueDatabaseName("env")
        try cluster.createDatabase(database)
        defer { try? cluster.dropDatabase(database) }
        try snap("--repo", repo, "init")
        // No PGPASSWORD: the socket trusts the superuser. PGHOST and PGPORT point at the test
        // cluster, so a snapshot that ignored them would find no server.
        let environment = [
            "PGHOST": cluster.socketDirectory, "PGPORT": String(cluster.port), "PGUSER": cluster.superuser,
            "PGDATABASE": database,
        ]
        for (db, expected) in [(nil, database), ("", database), ("postgres", "postgres")] as [(String?, String)] {
            let made = try snap(
                ["--repo", repo, "snapshot"] + (db.map { ["--db", $0] } ?? []), environment: environment)
            #expect(made.status == 0, "\(db ?? "no --db"): \(made.stderr)")
            let shown = try parseJSON(try snap("--repo", repo, "show", "latest", "--json").stdout) as? [String: Any]
            #expect((shown?["database"] as? [String: Any])?["name"] as? String == expected, "\(db ?? "no --db")")
        }
    }

    @Test func databaseAndStorageTogether() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        let restored = folder.file("restored")
        try FileManager.default.createDirectory(atPath: storage + "/uploads", withIntermediateDirectories: true)
        try writeFile(storage + "/uploads/a.txt", Array("attached to row 1".utf8))
        let source = try makeAwkwardDatabase(cluster)
        try snap("--repo", repo, "init")
        let snapshot = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--storage", storage)
        #expect(snapshot.status == 0, "\(snapshot.stderr)")

        let missingTarget = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: source))
        #expect(missingTarget.status == 2)
        #expect(missingTarget.stderr.contains("--storage-to"))

        let target = cluster.uniqueDatabaseName("both")
        try cluster.createDatabase(target)
        let restore = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target), "--storage-to", restored)
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try dump(target) == dump(source))
        #expect(differences(try readTree(storage), try readTree(restored)).isEmpty)
    }

    /// The snapshot records how the dump's data is spread; a restore runs parallel jobs by
    /// default only when no table holds most of it, and says how many it ran.
    @Test func restoreJobsFollowTheRecordedTableData() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        let spread = cluster.uniqueDatabaseName("spread")
        let single = cluster.uniqueDatabaseName("single")
        try cluster.createDatabase(spread)
        try cluster.createDatabase(single)
        try cluster.psql(
            """
            CREATE TABLE a AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
            CREATE TABLE b AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
            CREATE TABLE c AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g;
            """, database: spread)
        try cluster.psql(
            "CREATE TABLE only_one AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
            database: single)
        let cpus = min(4, ProcessInfo.processInfo.activeProcessorCount)
        for (database, expectedJobs) in [(spread, cpus), (single, 1)] {
            let made = try snap(
                "--repo", repo, "snapshot", "--db", cluster.conninfo(database: database), "--json", "--force-dump")
            #expect(made.status == 0, "\(made.stderr)")
            let summary = try #require(try parseJSON(made.stdout) as? [String: Any])
            let layout = try #require((summary["database"] as? [String: Any])?["table_data"] as? [String: Any])
            #expect(layout["entries"] as? Int == (database == spread ? 3 : 1), "\(layout)")
            let id = try #require(summary["id"] as? String)
            let shown = try snap("--repo", repo, "show", id).stdout
            let choice =
                database == spread ? "a restore runs parallel jobs by default" : "a restore runs one job by default"
            #expect(shown.contains(choice), "\(shown)")

            let target = cluster.uniqueDatabaseName("jobs")
            try cluster.createDatabase(target)
            // /var/tmp, on disk: a TMPDIR in memory (tmpfs) would make the restore stream with one job.
            let restored = try snap(
                "--repo", repo, "restore", id, "--db", cluster.conninfo(database: target),
                environment: ["TMPDIR": "/var/tmp"])
            #expect(restored.status == 0, "\(restored.stderr)")
            let plural = expectedJobs == 1 ? "job" : "jobs"
            #expect(restored.stdout.contains("with \(expectedJobs) \(plural):"), "\(restored.stdout)")
            #expect(try dump(target) == dump(database))

            let again = cluster.uniqueDatabaseName("jobsone")
            try cluster.createDatabase(again)
            let one = try snap(
                "--repo", repo, "restore", id, "--db", cluster.conninfo(database: again), "--jobs", "1")
            #expect(one.stdout.contains("with 1 job:"), "\(one.stdout)")
        }
    }

    @Test func connectionFailuresAreOneLineAndRecordNothing() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        let source = try makeAwkwardDatabase(cluster)
        let cases: [(String, [String])] = [
            ("host=127.0.0.1 port=\(try TestCluster.freePort()) dbname=\(source) connect_timeout=5", ["127.0.0.1"]),
            (cluster.conninfo(database: "no_such_database"), ["no_such_database"]),
            (cluster.conninfo(database: source, password: "wrong-password"), ["password"]),
            // libpq quotes what it cannot parse; a mistyped URI becomes a database name the
            // server repeats. Neither may show the password.
            ("postgresql://app:wrong-password@[::1/\(source)", ["cannot parse", "URI"]),
            ("password=my wrong-password " + cluster.conninfo(database: source), ["cannot parse", "key=value"]),
            ("postgresql:/app:wrong-password@localhost/\(source)", ["app:***@"]),
        ]
        for (conninfo, mentions) in cases {
            let result = try snap("--repo", repo, "snapshot", "--db", conninfo)
            #expect(result.status == 1, "\(conninfo): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            for mention in mentions { #expect(result.stderr.contains(mention), "\(result.stderr)") }
            #expect(!result.stderr.contains("wrong-password"), "\(result.stderr)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
            #expect(try objectCount(repo) == 0)
        }
    }

    /// Starts `snap snapshot` of the postgres database in a new repository in `folder`, its
    /// pg_dump replaced by a script that answers `--version` and then runs `then` (shell); with
    /// `ignoringHangup`, started the way `nohup` starts it.
    private func startSnapshot(in folder: TemporaryDirectory, pgDumpThen then: String, ignoringHangup: Bool = false)
        throws -> Process
    {
        let hook = folder.file("pg_dump")
        try writeFile(
            hook,
            Array(
                "#!/bin/sh\ncase \"$1\" in --version) exec \(cluster.binDirectory)/pg_dump \"$@\";; esac\n\(then)\n"
                    .utf8),
            mode: 0o755)
        try snap("--repo", folder.file("repo"), "init")
        let arguments = ["--repo", folder.file("repo"), "snapshot", "--db", cluster.conninfo(database: "postgres")]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ignoringHangup ? "/bin/sh" : snapBinary)
        process.arguments =
            ignoringHangup ? ["-c", "trap '' HUP; exec \"$0\" \"$@\"", snapBinary] + arguments : arguments
        var environment = ProcessInfo.processInfo.environment
        environment["SNAP_TEST_PG_DUMP"] = hook
        process.environment = environment
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// A SIGTERM sent to snap alone (systemd, a timeout, `kill PID`) stops its pg_dump too, and
    /// records nothing.
    @Test func terminatingSnapStopsItsChild() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let pidFile = folder.file("child.pid")
        let process = try startSnapshot(in: folder, pgDumpThen: "echo $$ > \(pidFile)\nexec sleep 60")
        let childPID = pidWritten(to: pidFile)
        try #require(childPID > 0, "the pg_dump hook never started")
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGTERM)
        #expect(waitUntilStopped(childPID), "pg_dump (pid \(childPID)) outlived snap")
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
    }

    /// A signal snap was started to ignore (`nohup`) stays ignored.
    @Test func anIgnoredHangupStaysIgnored() throws {
        let folder = try TemporaryDirectory()
        let started = Date()
        let ready = folder.file("pg_dump.started")
        let process = try startSnapshot(in: folder, pgDumpThen: ": > \(ready)\nexec sleep 2", ignoringHangup: true)
        // Once pg_dump runs, snap is past its set-up: the signal tests what it kept, not the shell.
        for _ in 0..<600 where !FileManager.default.fileExists(atPath: ready) { usleep(50_000) }
        try #require(FileManager.default.fileExists(atPath: ready), "the pg_dump hook never started")
        kill(process.processIdentifier, SIGHUP)
        process.waitUntilExit()
        // Not killed: it ran on until pg_dump ended without output, and failed for that.
        #expect(process.terminationReason == .exit && process.terminationStatus == 1)
        #expect(Date().timeIntervalSince(started) >= 2)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.file("repo/snapshots")).isEmpty)
    }

    @Test func passwordNeverReachesTheRecordOrTheCommandLine() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let argvLog = folder.file("argv.log")
        let hook = folder.file("pg_dump")
        let source = try makeAwkwardDatabase(cluster)
        try cluster.psql("GRANT pg_read_all_data TO \(cluster.passwordUser)", database: source)
        let realDump = cluster.binDirectory + "/pg_dump"
        try writeFile(hook, Array("#!/bin/sh\necho \"$@\" > \(argvLog)\nexec \(realDump) \"$@\"\n".utf8), mode: 0o755)
        try snap("--repo", repo, "init")
        let result = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: source, password: cluster.password),
            environment: ["SNAP_TEST_PG_DUMP": hook])
        #expect(result.status == 0, "\(result.stderr)")
        let argv = try String(contentsOfFile: argvLog, encoding: .utf8)
        #expect(argv.contains("--snapshot"))
        #expect(!argv.contains(cluster.password))
        for name in try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots") {
            #expect(
                !(try String(contentsOfFile: repo + "/snapshots/" + name, encoding: .utf8)).contains(cluster.password))
        }
    }

    @Test func killedPgDumpRecordsNothing() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let hook = folder.file("pg_dump")
        let source = try makeAwkwardDatabase(cluster)
        // Real output for a while, then the process dies of SIGKILL mid-stream.
        let realDump = cluster.binDirectory + "/pg_dump"
        try writeFile(hook, Array("#!/bin/sh\n\(realDump) \"$@\" | head -c 20000\nkill -9 $$\n".utf8), mode: 0o755)
        try snap("--repo", repo, "init")
        let result = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: source),
            environment: ["SNAP_TEST_PG_DUMP": hook])
        #expect(result.status == 1)
        #expect(result.stderr.contains("pg_dump"), "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
        #expect(
            try snap("--repo", repo, "list", "--json").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                == "[\n\n]"
                || (try parseJSON(try snap("--repo", repo, "list", "--json").stdout) as? [Any])?.isEmpty == true)
    }

    /// The storage folder is read while the dump streams; a dump that dies meanwhile still records
    /// nothing, the walk stops (inside a large file, not after it), and the next snapshot (files
    /// stored by the failed one included) is whole.
    @Test func killedPgDumpWhileTheFolderIsReadRecordsNothing() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let storage = folder.file("storage")
        let hook = folder.file("pg_dump")
        for index in 0..<400 {
            let path = storage + "/d\(index % 20)/f\(index).bin"
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try writeFile(path, pseudoRandomBytes(5000 + index, seed: UInt64(index)))
        }
        let source = try makeAwkwardDatabase(cluster)
        let realDump = cluster.binDirectory + "/pg_dump"
        try writeFile(
            hook, Array("#!/bin/sh\n\(realDump) \"$@\" | head -c 20000\nsleep 0.5\nkill -9 $$\n".utf8), mode: 0o755)
        // A 64 GiB sparse file, read first: about a minute of chunking and hashing, so the walk is
        // inside it when pg_dump dies, and must stop there rather than read it to the end.
        let sparse = storage + "/a-large-sparse.bin"
        #expect(FileManager.default.createFile(atPath: sparse, contents: nil))
        #expect(truncate(sparse, 64 << 30) == 0)
        try snap("--repo", repo, "init")
        let started = Date()
        let failed = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--storage", storage,
            environment: ["SNAP_TEST_PG_DUMP": hook])
        #expect(Date().timeIntervalSince(started) < 30, "the walk was not stopped when the dump failed")
        #expect(failed.status == 1)
        #expect(failed.stderr.contains("pg_dump"), "\(failed.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)
        try FileManager.default.removeItem(atPath: sparse)

        let good = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--storage", storage)
        #expect(good.status == 0, "\(good.stderr)")
        #expect(try snap("--repo", repo, "check", "--read-data").status == 0)
        let target = cluster.uniqueDatabaseName("afterkill")
        try cluster.createDatabase(target)
        let restored = folder.file("restored")
        let restore = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target), "--storage-to", restored)
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try dump(target) == dump(source))
        #expect(differences(try readTree(storage), try readTree(restored)).isEmpty)
    }

    /// Runs on a cluster of its own with autovacuum off: the WAL position is cluster-wide, so other
    /// tests' writes (or an autoanalyze) would rightly prevent the reuse.
    @Test func unchangedDatabaseReusesTheLastDumpAndAnyChangeDumpsAgain() throws {
        let cluster = try TestCluster()
        defer { cluster.stop() }
        try cluster.psql("ALTER SYSTEM SET autovacuum = off; SELECT pg_reload_conf();")
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let source = try makeAwkwardDatabase(cluster)
        try snap("--repo", repo, "init")
        func take(_ extra: String...) throws -> [String: Any] {
            let result = try snap(
                ["--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--json"] + extra)
            #expect(result.status == 0, "\(result.stderr)")
            return try parseJSON(result.stdout) as? [String: Any] ?? [:]
        }
        func wal(_ snapshot: [String: Any]) -> String? {
            (snapshot["database"] as? [String: Any])?["wal_position"] as? String
        }
        /// Reused exactly when nothing moved the WAL (a checkpoint may, rarely): the rule itself.
        func expectReuse(of previous: [String: Any], by next: [String: Any]) -> Bool {
            let same = wal(previous) == wal(next)
            #expect((next["database_reused_from"] as? String == previous["id"] as? String) == same)
            return same
        }
        let first = try take()
        #expect(first["database_reused_from"] == nil)
        let expected = try cluster.pgDumpPlain(database: source)

        // Nothing changed: the dump is reused, nothing is stored, and the snapshot restores exactly.
        let second = try take()
        var reusedOnce = expectReuse(of: first, by: second)
        func layout(_ snapshot: [String: Any]) -> [String: Int]? {
            (snapshot["database"] as? [String: Any])?["table_data"] as? [String: Int]
        }
        #expect(layout(first)?["entries"] ?? 0 > 0)
        if reusedOnce {
            #expect((second["totals"] as? [String: Any])?["new_objects"] as? Int == 0)
            // The reused dump's layout comes with it: the restore's choice of jobs stays.
            #expect(layout(second) == layout(first))
        }
        let target = cluster.uniqueDatabaseName("reused")
        try cluster.createDatabase(target)
        #expect(
            try snap("--repo", repo, "restore", second["id"] as! String, "--db", cluster.conninfo(database: target))
                .status == 0)
        #expect(try cluster.pgDumpPlain(database: target) == expected)

        // --force-dump dumps anyway.
        #expect(try take("--force-dump")["database_reused_from"] == nil)

        // nextval() can move a sequence without writing WAL: still a change.
        try cluster.psql("SELECT nextval('billing.invoice_numbers')", database: source)
        let afterSequence = try take()
        #expect(afterSequence["database_reused_from"] == nil)
        reusedOnce = try expectReuse(of: afterSequence, by: take()) || reusedOnce
        #expect(reusedOnce, "an idle cluster never kept its WAL position between two snapshots")

        // A row change moves the WAL position.
        try cluster.psql("UPDATE billing.invoices SET memo = 'x' WHERE id = 1000", database: source)
        #expect(try take()["database_reused_from"] == nil)

        // A dump with an object gone from the repository is not reused: dumping again stores it.
        let whole = try take()
        if expectReuse(of: whole, by: try take()) {
            let repository = try Repository.open(at: repo)
            let record = try repository.snapshots().snapshots.first { $0.id == whole["id"] as? String }!.record
            let chunks = try ManifestReader(repository: repository).databaseEntry(record.manifest)?.chunks ?? []
            let victim = chunks.last!.hex
            try FileManager.default.removeItem(atPath: "\(repo)/objects/\(victim.prefix(2))/\(victim)")
            #expect(try take()["database_reused_from"] == nil)
            #expect(
                chunks.count < 2
                    || FileManager.default.fileExists(atPath: "\(repo)/objects/\(victim.prefix(2))/\(victim)"))
        }

        // With an unlogged table the dump is never reused.
        try cluster.psql("CREATE UNLOGGED TABLE public.scratch (x int)", database: source)
        _ = try take()
        #expect(try take()["database_reused_from"] == nil)
    }

}

private func idFrom(_ json: String) throws -> String {
    ((try parseJSON(json) as? [String: Any])?["id"] as? String) ?? ""
}
