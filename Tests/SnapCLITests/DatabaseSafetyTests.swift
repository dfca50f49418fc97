import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Skips where PostgreSQL is not installed, except under CI, where the suite runs and fails.
private let needsServer = Testing.ConditionTrait.enabled(
    if: TestCluster.isAvailable, Comment(rawValue: TestCluster.unavailableReason))

/// What issue 12 found about databases: a restore that fails must leave the live database as it
/// was, bring back everything the snapshot holds (database-level settings too), work for any
/// database name, and say how to succeed; a snapshot must dump the database that was meant, and
/// exactly the state it records.
@Suite(needsServer) struct DatabaseSafetyTests {
    let cluster: TestCluster

    init() throws { cluster = try TestCluster.start() }

    private func dump(_ database: String) throws -> String { try cluster.pgDumpPlain(database: database) }

    /// A new repository (in `folder`) holding one snapshot of `database`; returns the repository.
    private func snapshot(_ database: String, in folder: TemporaryDirectory) throws -> String {
        let repo = folder.file("repo")
        if !FileManager.default.fileExists(atPath: repo) { try snap("--repo", repo, "init") }
        let result = try snap("--repo", repo, "snapshot", "--db", cluster.conninfo(database: database))
        #expect(result.status == 0, "\(result.stderr)")
        return repo
    }

    /// The databases a `--clean` of `name` made or left: replacements and replaced copies.
    private func leftovers(of name: String) throws -> String {
        try cluster.psql(
            "SELECT count(*) FROM pg_database WHERE datname ~ '^snap_(restore|replaced)_[0-9a-f]+_' AND right(datname, \(name.count)) = \(literal(name))"
        )
    }

    private func literal(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "''") + "'" }

    // MARK: Point 1: a failed --clean leaves the live database

    @Test func aCleanRestoreThatFailsLeavesTheLiveDatabaseAsItWas() throws {
        let folder = try TemporaryDirectory()
        let live = try makeAwkwardDatabase(cluster)
        let repo = try snapshot(live, in: folder)
        try cluster.psql("UPDATE billing.invoices SET amount = 0; CREATE TABLE public.newer (x int);", database: live)
        let before = try dump(live)

        // A damaged chunk in the middle of the dump: `snap check` (structure only) does not see
        // it; the load does, into the new copy, which is then dropped.
        let repository = try Repository.open(at: repo)
        let record = try repository.snapshots().snapshots[0].record
        let chunks = try #require(try ManifestReader(repository: repository).databaseEntry(record.manifest)?.chunks)
        try #require(chunks.count > 2)
        let victim = chunks[chunks.count / 2].hex
        let victimPath = "\(repo)/objects/\(victim.prefix(2))/\(victim)"
        let original = try #require(FileManager.default.contents(atPath: victimPath))
        try writeFile(victimPath, Array(original.reversed()), mode: 0o600)
        #expect(try snap("--repo", repo, "check").status == 0, "the damage is one only --read-data sees")
        let damaged = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean")
        #expect(damaged.status == 1)
        #expect(damaged.stderr.contains("was not changed"), "\(damaged.stderr)")
        #expect(damaged.stderr.split(separator: "\n").filter { $0.hasPrefix("snap: error") }.count == 1)
        #expect(try dump(live) == before)
        #expect(try leftovers(of: live) == "0")
        try writeFile(victimPath, Array(original), mode: 0o600)

        // The same with --jobs 2: the temporary copy is loaded by parallel workers.
        try writeFile(victimPath, Array(original.reversed()), mode: 0o600)
        let parallel = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean", "--jobs", "2")
        #expect(parallel.status == 1 && parallel.stderr.contains("was not changed"), "\(parallel.stderr)")
        #expect(try dump(live) == before)
        try writeFile(victimPath, Array(original), mode: 0o600)

        // Undamaged, the same command replaces the live database.
        let restored = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean")
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try dump(live) != before)
        #expect(try leftovers(of: live) == "0")
    }

    /// Database and folder together: each is built beside its target and swapped in only when
    /// both are whole; a damaged object on either side leaves both targets as they were.
    @Test func aRestoreOfBothSwapsNeitherWhenEitherFails() throws {
        let folder = try TemporaryDirectory()
        let live = try makeAwkwardDatabase(cluster)
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage + "/sub", withIntermediateDirectories: true)
        try writeFile(storage + "/sub/a.bin", pseudoRandomBytes(300_000, seed: 7))
        try writeFile(storage + "/b.txt", Array("b\n".utf8))
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        let taken = try snap(
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: live), "--storage", storage)
        #expect(taken.status == 0, "\(taken.stderr)")
        try cluster.psql("CREATE TABLE public.newer (x int)", database: live)
        try writeFile(storage + "/c.txt", Array("newer\n".utf8))
        let (databaseBefore, folderBefore) = (try dump(live), try readTree(storage))

        let repository = try Repository.open(at: repo)
        let record = try repository.snapshots().snapshots[0].record
        let reader = ManifestReader(repository: repository)
        let dumpChunks = try #require(try reader.databaseEntry(record.manifest)?.chunks)
        var fileChunk: ObjectID?
        try reader.forEachEntry(record.manifest) { entry in
            if entry.path == "sub/a.bin" { fileChunk = entry.chunks.first }
        }
        for victim in [dumpChunks[dumpChunks.count / 2], try #require(fileChunk)] {
            let path = "\(repo)/objects/\(victim.hex.prefix(2))/\(victim.hex)"
            let original = try #require(FileManager.default.contents(atPath: path))
            try writeFile(path, Array(original.reversed()), mode: 0o600)
            let failed = try snap(
                "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--storage-to", storage,
                "--clean")
            #expect(failed.status == 1, "\(failed.stderr)")
            #expect(
                failed.stderr.contains("left as it was") || failed.stderr.contains("not changed"), "\(failed.stderr)")
            #expect(try dump(live) == databaseBefore)
            #expect(differences(folderBefore, try readTree(storage)).isEmpty)
            #expect(try leftovers(of: live) == "0")
            try writeFile(path, Array(original), mode: 0o600)
        }

        // The dry run names what would change on both sides.
        let plan = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--storage-to", storage,
            "--clean", "--dry-run")
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stdout.contains("database: would load"), "\(plan.stdout)")
        #expect(
            plan.stdout.contains("built beside \(storage)") && plan.stdout.contains("removed: 1 file(s): c.txt"),
            "\(plan.stdout)")
        #expect(try dump(live) == databaseBefore)
        #expect(differences(folderBefore, try readTree(storage)).isEmpty)

        let restored = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--storage-to", storage,
            "--clean")
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try dump(live) != databaseBefore)
        #expect(!FileManager.default.fileExists(atPath: storage + "/c.txt"))
    }

    /// An imported archive may hold a plain SQL `database.dump`: refused up front, never loaded
    /// half-way into a swapped-in database.
    @Test func aPlainSQLDumpIsRefusedBeforeAnythingChanges() throws {
        let folder = try TemporaryDirectory()
        let live = try makeAwkwardDatabase(cluster)
        let before = try dump(live)
        let staging = folder.file("staging")
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        try writeFile(staging + "/database.dump", Array(before.utf8))
        let archive = folder.file("backup_20260101_000000.tar.gz")
        #expect(try run("/bin/tar", ["-czf", archive, "-C", staging, "database.dump"]).status == 0)
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        let imported = try snap("--repo", repo, "import", archive)
        #expect(imported.status == 0, "\(imported.stderr)")

        for clean in [true, false] {
            let target = clean ? live : cluster.uniqueDatabaseName("plain_target")
            if !clean { try cluster.createDatabase(target) }
            let refused = try snap(
                ["--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target)]
                    + (clean ? ["--clean"] : []))
            #expect(refused.status == 1)
            #expect(
                refused.stderr.contains("plain SQL") && refused.stderr.contains("psql")
                    && refused.stderr.contains("nothing was changed"), "\(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        }
        #expect(try dump(live) == before)
        #expect(try leftovers(of: live) == "0")
    }

    // MARK: Point 2: database-level settings

    /// ALTER DATABASE ... SET, per-role settings in the database, its comment and its grants are
    /// in the dump's archive but pg_restore applies them only with --create: snap carries them,
    /// into the replaced database and into a new one of another name.
    @Test func databaseLevelSettingsCommentsAndGrantsComeBack() throws {
        let folder = try TemporaryDirectory()
        let live = cluster.uniqueDatabaseName("settings")
        let role = cluster.uniqueDatabaseName("settings_role")
        try cluster.createDatabase(live)
        try cluster.psql("CREATE ROLE \(role)")
        defer {
            try? cluster.dropDatabase(live)
            _ = try? cluster.psql("DROP OWNED BY \(role); DROP ROLE IF EXISTS \(role)")
        }
        let quoted = TestCluster.identifier(live)
        try cluster.psql("CREATE SCHEMA app; CREATE TABLE app.t (x int); INSERT INTO app.t VALUES (1);", database: live)
        try cluster.psql(
            """
            ALTER DATABASE \(quoted) SET search_path TO app, public;
            ALTER DATABASE \(quoted) SET timezone TO 'Asia/Tokyo';
            ALTER ROLE \(role) IN DATABASE \(quoted) SET work_mem TO '3MB';
            COMMENT ON DATABASE \(quoted) IS 'it''s the app; DATABASE \(live) itself';
            REVOKE CONNECT ON DATABASE \(quoted) FROM PUBLIC;
            GRANT CONNECT, TEMPORARY ON DATABASE \(quoted) TO \(role);
            """)
        let expected = try databaseLevel(live)
        #expect(expected.contains("search_path=app, public") && expected.contains("work_mem=3MB"), "\(expected)")
        let repo = try snapshot(live, in: folder)

        // The live database has moved on: settings reset, comment and grants changed.
        try cluster.psql(
            """
            ALTER DATABASE \(quoted) RESET ALL;
            ALTER ROLE \(role) IN DATABASE \(quoted) RESET ALL;
            COMMENT ON DATABASE \(quoted) IS NULL;
            GRANT CONNECT ON DATABASE \(quoted) TO PUBLIC;
            REVOKE ALL ON DATABASE \(quoted) FROM \(role);
            """)
        #expect(try databaseLevel(live) != expected)
        let clean = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean")
        #expect(clean.status == 0, "\(clean.stderr)")
        #expect(try databaseLevel(live) == expected, "\(clean.stdout) \(clean.stderr)")
        // The app's session sees them: a search_path set on the database.
        #expect(try cluster.psql("SELECT count(*) FROM t", database: live) == "1")

        // Into a new, empty database of another name: pointed at that name.
        let copy = cluster.uniqueDatabaseName("settings_copy")
        try cluster.createDatabase(copy)
        defer { try? cluster.dropDatabase(copy) }
        let restored = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: copy))
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try databaseLevel(copy) == expected)
        #expect(try databaseLevel(live) == expected, "the source's own settings are untouched")
    }

    /// The database's own settings, per-role settings in it, comment and grants, as one text.
    private func databaseLevel(_ name: String) throws -> String {
        try cluster.psql(
            """
            SELECT coalesce(r.rolname, '*') || ': ' || array_to_string(s.setconfig, ';')
              FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
              LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = \(literal(name))
            UNION ALL SELECT 'comment: ' || coalesce(shobj_description(oid, 'pg_database'), '-')
              FROM pg_database WHERE datname = \(literal(name))
            UNION ALL SELECT 'acl: ' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(datacl) a), '-')
              FROM pg_database WHERE datname = \(literal(name))
            ORDER BY 1
            """)
    }

    // MARK: Point 3: any database name

    /// A name reaches pg_dump and pg_restore through the environment and through a connection
    /// string quoted as libpq quotes, never as SQL: quotes, backslashes, spaces, `=` and
    /// non-ASCII all snapshot and restore, with and without --clean.
    @Test(arguments: ["it's", #"back\slash"#, #"quo"te"#, "with space", "key=value", "ünï 日本", #"all ' \ " = ü"#])
    func awkwardDatabaseNamesSnapshotAndRestore(name: String) throws {
        let folder = try TemporaryDirectory()
        let live = name + " " + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        let copy = live + " copy"
        try cluster.createDatabase(live)
        try cluster.createDatabase(copy)
        defer {
            try? cluster.dropDatabase(live)
            try? cluster.dropDatabase(copy)
        }
        // psql and pg_dump take a name with '=' for a connection string: name it in one.
        let liveTarget = "dbname=" + TestCluster.quote(live)
        let copyTarget = "dbname=" + TestCluster.quote(copy)
        try cluster.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", database: liveTarget)
        let repo = try snapshot(live, in: folder)
        let expected = try dump(liveTarget)
        // Named by PGDATABASE alone, too.
        let byEnvironment = try snap(
            "--repo", repo, "snapshot", "--json",
            environment: [
                "PGHOST": cluster.socketDirectory, "PGPORT": String(cluster.port), "PGUSER": cluster.superuser,
                "PGDATABASE": live,
            ])
        #expect(byEnvironment.status == 0, "\(byEnvironment.stderr)")
        #expect(
            ((try parseJSON(byEnvironment.stdout) as? [String: Any])?["database"] as? [String: Any])?["name"] as? String
                == live)

        let intoCopy = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: copy))
        #expect(intoCopy.status == 0, "\(intoCopy.stderr)")
        #expect(try dump(copyTarget) == expected)

        try cluster.psql("INSERT INTO t VALUES (0)", database: liveTarget)
        let clean = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean")
        #expect(clean.status == 0, "\(clean.stderr)")
        #expect(try dump(liveTarget) == expected)
        #expect(try leftovers(of: live) == "0")
    }

    // MARK: Point 6: the database that was meant

    /// With PGHOST, PGPORT and PGUSER set but no database named anywhere, libpq would dump its
    /// default (the user's name, here `postgres`): refused. The config file's `db` combines with
    /// libpq's environment instead of being ignored when PGHOST is exported.
    @Test func aSnapshotDumpsTheDatabaseThatWasNamedOrNone() throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        let app = cluster.uniqueDatabaseName("named_app")
        try cluster.createDatabase(app)
        defer { try? cluster.dropDatabase(app) }
        let server = [
            "PGHOST": cluster.socketDirectory, "PGPORT": String(cluster.port), "PGUSER": cluster.superuser,
            "PGDATABASE": "", "SNAP_CONFIG": folder.file("config"),
        ]
        try writeFile(folder.file("config"), Array("# no db here\n".utf8))
        for db in [nil, "host=\(cluster.socketDirectory)", "postgresql://\(cluster.superuser)@"] {
            let refused = try snap(
                ["--repo", repo, "snapshot"] + (db.map { ["--db", $0] } ?? []), environment: server)
            #expect(refused.status == 2, "\(db ?? "no --db"): \(refused.stderr)")
            #expect(refused.stderr.contains("--db") && refused.stderr.contains("PGDATABASE"), "\(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: repo + "/snapshots").isEmpty)

        // The file names the database, the environment the server: both count.
        try writeFile(folder.file("config"), Array("db = dbname=\(app)\n".utf8))
        let combined = try snap("--repo", repo, "snapshot", "--json", environment: server)
        #expect(combined.status == 0, "\(combined.stderr)")
        let facts = (try parseJSON(combined.stdout) as? [String: Any])?["database"] as? [String: Any]
        #expect(facts?["name"] as? String == app)
        #expect(facts?["host"] as? String == cluster.socketDirectory)
        // The summary line names the database it dumped.
        #expect(
            combined.stderr.contains("of database \"\(app)\" at socket \(cluster.socketDirectory)"),
            "\(combined.stderr)")
    }

    // MARK: Point 12: no child outlives snap

    /// Killed with SIGKILL (no handler runs), snap still takes its pg_dump or pg_restore with it:
    /// the kernel sends the child SIGKILL when snap goes (PR_SET_PDEATHSIG).
    @Test(arguments: ["snapshot", "restore"])
    func aChildDiesWithSnapEvenWhenSnapIsKilled(command: String) throws {
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        let pidFile = folder.file("child.pid")
        let tool = command == "snapshot" ? "pg_dump" : "pg_restore"
        let stand = folder.file("bin/\(tool)")
        try FileManager.default.createDirectory(atPath: folder.file("bin"), withIntermediateDirectories: true)
        try writeFile(
            stand,
            Array(
                "#!/bin/sh\ncase \"$1\" in --version) exec \(cluster.binDirectory)/\(tool) \"$@\";; esac\necho $$ > \(pidFile)\nexec sleep 120\n"
                    .utf8), mode: 0o755)
        var environment = ProcessInfo.processInfo.environment
        environment["SNAP_REPO"] = repo
        environment["SNAP_CACHE_DIR"] = testCacheFolder
        var arguments: [String]
        let source = cluster.uniqueDatabaseName("orphan")
        let target = cluster.uniqueDatabaseName("orphan_target")
        try cluster.createDatabase(source)
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
        }
        if command == "snapshot" {
            try snap("--repo", repo, "init")
            environment["SNAP_TEST_PG_DUMP"] = stand
            arguments = ["snapshot", "--db", cluster.conninfo(database: source)]
        } else {
            _ = try snapshot(source, in: folder)
            try cluster.createDatabase(target)
            environment["SNAP_PG_BIN"] = folder.file("bin")
            arguments = ["restore", "latest", "--db", cluster.conninfo(database: target), "--jobs", "1"]
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: snapBinary)
        process.arguments = arguments
        process.environment = environment
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let childPID = pidWritten(to: pidFile)
        try #require(childPID > 0, "the \(tool) stand-in never started")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(waitUntilStopped(childPID), "\(tool) (pid \(childPID)) outlived snap killed with SIGKILL")
    }

    // MARK: Point 16: a restore that cannot succeed says how to

    /// A role that is not a superuser cannot give objects to other roles, and nobody can give
    /// them to, or grant to, roles the server lacks: refused before anything changes, naming
    /// --no-owner, --no-acl or CREATE ROLE; with the flags the same restore succeeds.
    @Test func rolesTheDumpNeedsAreCheckedBeforeAnythingChanges() throws {
        let folder = try TemporaryDirectory()
        let owner = cluster.uniqueDatabaseName("gone_owner")
        let reader = cluster.uniqueDatabaseName("gone_reader")
        let app = cluster.uniqueDatabaseName("app_role")
        let source = cluster.uniqueDatabaseName("roles_src")
        try cluster.psql("CREATE ROLE \(owner); CREATE ROLE \(reader); CREATE ROLE \(app) LOGIN CREATEDB;")
        try cluster.createDatabase(source)
        try cluster.psql(
            "CREATE TABLE t (x int); ALTER TABLE t OWNER TO \(owner); GRANT SELECT ON t TO \(reader);",
            database: source)
        let repo = try snapshot(source, in: folder)
        let target = cluster.uniqueDatabaseName("roles_target")
        try cluster.createDatabase(target, options: "OWNER \(app)")
        defer {
            try? cluster.dropDatabase(source)
            try? cluster.dropDatabase(target)
            _ = try? cluster.psql(
                "DROP ROLE IF EXISTS \(owner); DROP ROLE IF EXISTS \(reader); DROP OWNED BY \(app); DROP ROLE IF EXISTS \(app);"
            )
        }
        func restore(_ user: String?, _ flags: String...) throws -> RunResult {
            try snap(
                ["--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target, user: user)] + flags)
        }
        func expectRefused(_ result: RunResult, naming: [String]) throws {
            #expect(result.status == 1)
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            #expect(result.stderr.contains("nothing was changed"), "\(result.stderr)")
            for word in naming { #expect(result.stderr.contains(word), "\(word): \(result.stderr)") }
            #expect(try cluster.psql("SELECT count(*) FROM pg_class WHERE relname = 't'", database: target) == "0")
        }
        // The owners exist, but the app's role may not give them objects.
        try expectRefused(try restore(app), naming: ["--no-owner", owner, "superuser"])
        try expectRefused(try restore(app, "--clean"), naming: ["--no-owner", owner])

        // The roles are gone from the server: even a superuser is refused, with what to create.
        try cluster.dropDatabase(source)
        try cluster.psql("DROP ROLE \(owner); DROP ROLE \(reader);")
        try expectRefused(try restore(nil), naming: ["CREATE ROLE \"\(owner)\"", "--no-owner"])
        try expectRefused(try restore(nil, "--no-owner"), naming: ["CREATE ROLE \"\(reader)\"", "--no-acl"])
        let done = try restore(app, "--no-owner", "--no-acl")
        #expect(done.status == 0, "\(done.stderr)")
        #expect(
            try cluster.psql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't'", database: target)
                == app)
    }

    /// A refusal names its fix: a missing target database, `createdb`.
    @Test func aMissingTargetNamesCreatedb() throws {
        let folder = try TemporaryDirectory()
        let source = try makeAwkwardDatabase(cluster)
        let repo = try snapshot(source, in: folder)
        let missing = cluster.uniqueDatabaseName("it's missing")
        for flags in [[], ["--clean"]] {
            let refused = try snap(
                ["--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: missing)] + flags)
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("createdb 'it'\\''s missing_"), "\(refused.stderr)")
            #expect(refused.stderr.split(separator: "\n").count == 1, "\(refused.stderr)")
        }
    }

    // MARK: Point 17: sessions ended, and --dry-run

    @Test func cleanNamesTheSessionsItEndsAndDryRunChangesNothing() throws {
        let folder = try TemporaryDirectory()
        let live = try makeAwkwardDatabase(cluster)
        let repo = try snapshot(live, in: folder)
        try cluster.psql("CREATE TABLE public.newer (x int)", database: live)
        let before = try dump(live)
        let storage = folder.file("storage")
        try FileManager.default.createDirectory(atPath: storage, withIntermediateDirectories: true)

        // An application's session, holding the database open.
        let session = try startClient(cluster, database: live, ["-c", "SELECT pg_sleep(600)"], appName: "the-app")
        defer { if session.isRunning { kill(session.processIdentifier, SIGKILL) } }
        let seen = try waitUntil(seconds: 10) {
            try cluster.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = \(literal(live)) AND application_name = 'the-app'"
            ) == "1"
        }
        try #require(seen)

        let dryRun = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean", "--dry-run")
        #expect(dryRun.status == 0, "\(dryRun.stderr)")
        #expect(dryRun.stdout.contains("would load") && dryRun.stdout.contains("swap"), "\(dryRun.stdout)")
        #expect(dryRun.stdout.contains("the-app") && dryRun.stdout.contains("nothing was changed"), "\(dryRun.stdout)")
        #expect(try dump(live) == before)
        #expect(session.isRunning)
        #expect(try leftovers(of: live) == "0")

        let clean = try snap("--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean")
        #expect(clean.status == 0, "\(clean.stderr)")
        let lines = clean.stderr.split(separator: "\n")
        let warned = lines.firstIndex { $0.contains("--clean ends the 1 session(s)") && $0.contains("the-app") }
        let ended = lines.firstIndex { $0.contains("ended 1 session(s)") && $0.contains("the-app") }
        #expect(warned != nil && ended != nil && warned! < ended!, "\(clean.stderr)")
        session.waitUntilExit()
        #expect(try dump(live) != before)
    }

    // MARK: Point 13: --jobs has a ceiling

    @Test func jobsAreHeldToWhatTheServerCanSpare() throws {
        let folder = try TemporaryDirectory()
        let source = try makeAwkwardDatabase(cluster)
        let repo = try snapshot(source, in: folder)
        let target = cluster.uniqueDatabaseName("jobs_target")
        try cluster.createDatabase(target)
        defer { try? cluster.dropDatabase(target) }
        let tooMany = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target), "--jobs", "65")
        #expect(tooMany.status == 2 && tooMany.stderr.contains("--jobs must be from 1 to 64"), "\(tooMany.stderr)")
        // max_connections is 100 on the test cluster: 64 jobs would take most of what is free.
        let capped = try snap(
            "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: target), "--jobs", "64")
        #expect(capped.status == 0, "\(capped.stderr)")
        let jobs = capped.stdout.firstMatch(of: /with (\d+) jobs?/).flatMap { Int($0.output.1) } ?? 0
        #expect(jobs >= 1 && jobs <= 50, "\(capped.stdout)")
        #expect(capped.stderr.contains("--jobs 64 would take the server's last free connections"), "\(capped.stderr)")
        #expect(try dump(target) == dump(source))
    }
}

/// psql started in the background on `database` with `arguments` (`-c SQL`...), as an
/// application's session would be, its output discarded.
private func startClient(
    _ cluster: TestCluster, database: String, _ arguments: [String], appName: String? = nil
) throws -> Process {
    let session = Process()
    session.executableURL = URL(fileURLWithPath: cluster.binDirectory + "/psql")
    session.arguments = ["-X", "-q", "-d", cluster.conninfo(database: database)] + arguments
    var environment = cluster.clientEnvironment
    environment["PGAPPNAME"] = appName
    session.environment = environment
    session.standardOutput = FileHandle.nullDevice
    session.standardError = FileHandle.nullDevice
    try session.run()
    return session
}

/// Point 4: the reuse of an unchanged database's dump must never skip a committed transaction.
@Suite(needsServer) struct DumpReuseOrderingTests {
    /// A transaction whose commit record is in the WAL but which is not yet visible (here held in
    /// that state by a synchronous standby that never answers) is in the recorded WAL position
    /// and not in the dump. Once it becomes visible, no new WAL follows: a next snapshot that
    /// went by the WAL position alone would reuse the dump without its row. snap records the
    /// transaction snapshot too, which the commit changes.
    @Test func aTransactionInProgressAtTheSnapshotIsNeverSkipped() throws {
        let cluster = try TestCluster()
        defer { cluster.stop() }
        try cluster.psql(
            "ALTER SYSTEM SET autovacuum = off; ALTER SYSTEM SET synchronous_standby_names = 'nobody'; SELECT pg_reload_conf();"
        )
        let source = cluster.uniqueDatabaseName("committing")
        try cluster.createDatabase(source)
        try cluster.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);", database: source)
        let folder = try TemporaryDirectory()
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        func take() throws -> [String: Any] {
            let result = try snap("--repo", repo, "snapshot", "--db", cluster.conninfo(database: source), "--json")
            #expect(result.status == 0, "\(result.stderr)")
            return try parseJSON(result.stdout) as? [String: Any] ?? [:]
        }
        func facts(_ snapshot: [String: Any]) -> [String: Any] { snapshot["database"] as? [String: Any] ?? [:] }

        // Two idle snapshots: the second reuses the first's dump, and says none was in progress.
        let idle = try take()
        #expect((facts(idle)["transaction_snapshot"] as? String)?.contains(":") == true)
        let reused = try take()
        if facts(reused)["wal_position"] as? String == facts(idle)["wal_position"] as? String {
            #expect(reused["database_reused_from"] as? String == idle["id"] as? String)
        }

        // A commit waiting for the synchronous standby: in the WAL, not yet visible.
        let committer = try startClient(
            cluster, database: source, ["-c", "SET synchronous_commit = on", "-c", "INSERT INTO t VALUES (2)"])
        defer { if committer.isRunning { kill(committer.processIdentifier, SIGKILL) } }
        let waiting = try waitUntil(seconds: 10) {
            try cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1"
        }
        try #require(waiting, "the commit never waited for the standby")

        let during = try take()
        // The commit becomes visible without writing WAL: the wait is cancelled, the row stays.
        try cluster.psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        committer.waitUntilExit()
        #expect(try cluster.psql("SELECT count(*) FROM t", database: source) == "2")

        let after = try take()
        #expect(facts(after)["wal_position"] as? String == facts(during)["wal_position"] as? String)
        #expect(after["database_reused_from"] == nil, "the dump without the committed row was reused")
        let target = cluster.uniqueDatabaseName("committed")
        try cluster.createDatabase(target)
        let restored = try snap(
            "--repo", repo, "restore", after["id"] as? String ?? "", "--db", cluster.conninfo(database: target))
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try cluster.psql("SELECT count(*) FROM t", database: target) == "2")
    }
}

/// `restore --clean` killed with SIGKILL at every step of its new order (replacement created,
/// loaded, settings applied and analyzed, swap, old copy dropped): the live database is always
/// either the old one or the new one, complete, and what a kill leaves is named by the next run.
@Suite(.serialized, needsServer) struct CleanRestoreKillTests {
    @Test func cleanRestoreKilledAtEveryStepLeavesOneWholeDatabase() throws {
        let cluster = try TestCluster.start()
        let folder = try TemporaryDirectory()
        let live = try makeAwkwardDatabase(cluster)
        defer { try? cluster.dropDatabase(live) }
        let repo = folder.file("repo")
        try snap("--repo", repo, "init")
        #expect(try snap("--repo", repo, "snapshot", "--db", cluster.conninfo(database: live)).status == 0)
        let snapshotState = try cluster.pgDumpPlain(database: live)
        try cluster.psql("UPDATE billing.invoices SET amount = 0; CREATE TABLE public.newer (x int);", database: live)
        var liveState = try cluster.pgDumpPlain(database: live)
        func leftovers() throws -> [String] {
            try cluster.psql(
                "SELECT datname FROM pg_database WHERE datname ~ '^snap_(restore|replaced)_[0-9a-f]+_\(live)$' ORDER BY 1"
            ).split(separator: "\n").map(String.init)
        }
        defer { for name in (try? leftovers()) ?? [] { try? cluster.dropDatabase(name) } }

        var step = 1
        var completed = false
        while !completed && step < 20 {
            let result = try snap(
                "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean",
                environment: ["SNAP_TEST_KILL_AFTER": String(step)])
            completed = result.status == 0
            let state = try cluster.pgDumpPlain(database: live)
            #expect(state == liveState || state == snapshotState, "kill at step \(step): the live database is neither")
            if !completed {
                #expect(result.status == 128 + SIGKILL, "step \(step): \(result.stderr)")
                // Until the swap commits, the live database is the old one.
                let left = try leftovers()
                if state == liveState {
                    #expect(left.count == 1 && left[0].hasPrefix("snap_restore_"), "step \(step): \(left)")
                } else {
                    // Swapped: the old copy stays until it is dropped, the last step.
                    #expect(
                        left.allSatisfy { $0.hasPrefix("snap_replaced_") } && left.count <= 1, "step \(step): \(left)")
                }
                // The next run names it, and leaves it.
                let named = try snap(
                    "--repo", repo, "restore", "latest", "--db", cluster.conninfo(database: live), "--clean",
                    "--dry-run")
                #expect(named.status == 0 && left.allSatisfy(named.stderr.contains), "\(named.stderr)")
                for name in left { try cluster.dropDatabase(name) }
                // Back to the state before the restore, for the next step.
                if state != liveState {
                    try cluster.psql(
                        "UPDATE billing.invoices SET amount = 0; CREATE TABLE public.newer (x int);", database: live)
                    liveState = try cluster.pgDumpPlain(database: live)
                    #expect(liveState != snapshotState)
                }
            }
            step += 1
        }
        #expect(completed)
        #expect(step >= 6, "fewer steps than the create, load, settings, swap and drop")
        #expect(try cluster.pgDumpPlain(database: live) == snapshotState)
        #expect(try leftovers().isEmpty)
    }
}
