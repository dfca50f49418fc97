import Foundation
import SnapCore
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// Crash safety of the built binary: runs killed at chosen repository mutations (the
// SNAP_TEST_KILL_AFTER hook) and at random moments (kill -9 from the test), a full disk, and
// commands that run at the same time. After every interruption the repository must check clean,
// every committed snapshot must restore exactly, prune must remove exactly what the interrupted run
// left, and the same command must then succeed.

/// Where a run is killed, relative to `total`, the number of repository mutations the complete
/// run makes (objects written and published, records written or removed, objects deleted).
enum CrashKillPoint: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case first, second, fifth, middle, threeQuarters, last, pastLast

    var testDescription: String { rawValue }

    /// For a snapshot of n new objects (total 2n + 1: n written, n published, the record), the
    /// middle is the last object written, three quarters is halfway through publishing, and the
    /// last is the record.
    func value(total: Int) -> Int {
        switch self {
        case .first: 1
        case .second: 2
        case .fifth: 5
        case .middle: max(1, total / 2)
        case .threeQuarters: max(1, total * 3 / 4)
        case .last: total
        case .pastLast: total + 1
        }
    }
}

/// Where an import of two archives is killed: `first` is the number of mutations of the first
/// archive (its record write is the last of them), `total` of both. Halfway through the second
/// archive's mutations its objects are written; three quarters in, half of them are published.
enum CrashImportKillPoint: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case first, second, fifth, lastOfFirstArchive, firstOfSecondArchive, publishingSecondArchive, pastLast

    var testDescription: String { rawValue }

    func value(first: Int, total: Int) -> Int {
        switch self {
        case .first: 1
        case .second: 2
        case .fifth: 5
        case .lastOfFirstArchive: first
        case .firstOfSecondArchive: first + 1
        case .publishingSecondArchive: first + (total - first) * 3 / 4
        case .pastLast: total + 1
        }
    }
}

/// `snap snapshot` prints the new id on stdout.
private func crashSnapshotID(_ result: CrashResult) -> String {
    result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// The lines a command wrote to stderr.
private func stderrLines(_ result: CrashResult) -> [Substring] {
    result.stderr.split(separator: "\n", omittingEmptySubsequences: true)
}

// MARK: - Fixtures, built once and copied for each kill point

/// A repository with one snapshot of a tree, and the tree changed since, to be snapshotted next:
/// a few hundred small files and some large ones.
private final class SnapshotFixture: Sendable {
    let scratch: CrashScratch
    let repo: String
    let source: String
    let committed: [String: CrashTree]
    let expected: CrashTree
    /// Mutations of `snap snapshot` of `source` into `repo`: two per new object, one for the record.
    let mutations: Int

    static let shared = Result<SnapshotFixture, any Error> { try SnapshotFixture() }

    private init() throws {
        scratch = try CrashScratch("snapshot-fixture", keepUntilExit: true)
        repo = scratch.file("repo")
        source = scratch.file("storage")
        try makeCrashTree(at: source, seed: 1, smallFiles: 300, largeFiles: [3 << 20, (2 << 20) + 12345])
        let first = try readTree(source)
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        let snapshot = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", source])
        guard snapshot.succeeded else { throw TestSupportError("first snapshot failed: \(snapshot.stderr)") }
        committed = [crashSnapshotID(snapshot): first]
        try changeCrashTree(at: source, seed: 2, newLarge: 4 << 20)
        expected = try readTree(source)

        let reference = scratch.file("reference")
        try copyCrashRepository(repo, to: reference)
        let run = try crashSnap(["--repo", reference, "snapshot", "--no-db", "--storage", source])
        guard run.succeeded else { throw TestSupportError("reference snapshot failed: \(run.stderr)") }
        mutations = 2 * (try crashNewObjects(reference, crashSnapshotID(run))) + 1
        try FileManager.default.removeItem(atPath: reference)
    }
}

/// Two classic backups made with the system's tar, of a tree and of the same tree changed, and a
/// repository with one snapshot (of another tree) to import them into.
private final class ImportFixture: Sendable {
    let scratch: CrashScratch
    let repo: String
    let archives: String
    let committed: [String: CrashTree]
    /// Archive file name to the tree it holds.
    let trees: [String: CrashTree]
    let names = ["backup_20240101_020000.tar.gz", "backup_20240102_020000.tar.gz"]
    /// Mutations of importing the first archive, and of importing both.
    let firstMutations: Int
    let mutations: Int

    static let shared = Result<ImportFixture, any Error> { try ImportFixture() }

    private init() throws {
        scratch = try CrashScratch("import-fixture", keepUntilExit: true)
        repo = scratch.file("repo")
        archives = scratch.file("archives")
        let work = scratch.file("work")
        try FileManager.default.createDirectory(atPath: archives, withIntermediateDirectories: true)
        try makeCrashTree(at: work + "/storage", seed: 11, smallFiles: 200, largeFiles: [2 << 20], wholeSeconds: true)
        var trees: [String: CrashTree] = [:]
        trees[names[0]] = try readTree(work + "/storage")
        var tar = try runProcess("tar", ["-czf", archives + "/" + names[0], "-C", work, "storage"])
        guard tar.succeeded else { throw TestSupportError("tar failed: \(tar.stderr)") }
        try changeCrashTree(at: work + "/storage", seed: 12, newLarge: 3 << 20, wholeSeconds: true)
        trees[names[1]] = try readTree(work + "/storage")
        tar = try runProcess("tar", ["-czf", archives + "/" + names[1], "-C", work, "storage"])
        guard tar.succeeded else { throw TestSupportError("tar failed: \(tar.stderr)") }
        self.trees = trees

        let other = scratch.file("other")
        try makeCrashTree(at: other, seed: 13, smallFiles: 20)
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        let snapshot = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", other])
        guard snapshot.succeeded else { throw TestSupportError("snapshot failed: \(snapshot.stderr)") }
        committed = [crashSnapshotID(snapshot): try readTree(other)]

        let reference = scratch.file("reference")
        try copyCrashRepository(repo, to: reference)
        let run = try crashSnap(["--repo", reference, "import", archives])
        guard run.succeeded else { throw TestSupportError("reference import failed: \(run.stderr)") }
        var newObjects: [String: Int] = [:]
        for id in crashRecordIDs(reference).subtracting(committed.keys) {
            let imported = (try crashRecord(reference, id))["sources"] as? [String: Any]
            let file = (imported?["imported"] as? [String: Any])?["file"] as? String ?? "?"
            newObjects[file] = try crashNewObjects(reference, id)
        }
        guard let first = newObjects[names[0]], let second = newObjects[names[1]] else {
            throw TestSupportError("the reference import made \(newObjects), not both archives")
        }
        firstMutations = 2 * first + 1
        mutations = firstMutations + 2 * second + 1
        try FileManager.default.removeItem(atPath: reference)
    }

    /// The tree an imported record holds, found by its archive's name.
    func tree(of repo: String, _ id: String) throws -> CrashTree? {
        let sources = (try crashRecord(repo, id))["sources"] as? [String: Any]
        return ((sources?["imported"] as? [String: Any])?["file"] as? String).flatMap { trees[$0] }
    }
}

/// A repository with five snapshots of a tree that changes between them (each adds a file of its
/// own), oldest first.
private final class HistoryFixture: Sendable {
    let scratch: CrashScratch
    let repo: String
    let ids: [String]
    let trees: [String: CrashTree]
    /// Objects that only the three oldest snapshots need: what `forget --keep-last 2 --prune`
    /// deletes after removing three records.
    let onlyInOldest: Int

    static let shared = Result<HistoryFixture, any Error> { try HistoryFixture() }

    private init() throws {
        scratch = try CrashScratch("history-fixture", keepUntilExit: true)
        repo = scratch.file("repo")
        let source = scratch.file("storage")
        try makeCrashTree(at: source, seed: 21, smallFiles: 60, largeFiles: [600_000])
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        var ids: [String] = []
        var trees: [String: CrashTree] = [:]
        for step in 1...5 {
            if step > 1 {
                try writeFile(source + "/step-\(step).bin", pseudoRandomBytes(400_000, seed: 2100 + UInt64(step)))
                try writeFile(source + "/d1/sub1/file-1.bin", pseudoRandomBytes(1000 + step, seed: 2200 + UInt64(step)))
                try stampCrashTree(source, wholeSeconds: false, seed: 21 + UInt64(step))
            }
            let snapshot = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", source])
            guard snapshot.succeeded else { throw TestSupportError("snapshot \(step) failed: \(snapshot.stderr)") }
            ids.append(crashSnapshotID(snapshot))
            trees[crashSnapshotID(snapshot)] = try readTree(source)
        }
        self.ids = ids
        self.trees = trees
        let reference = scratch.file("reference")
        try copyCrashRepository(repo, to: reference)
        let run = try crashSnap(["--repo", reference, "forget", "--keep-last", "2", "--prune", "--json"])
        let report = (try? parseJSON(run.stdout)) as? [String: Any]
        guard run.succeeded, let deleted = (report?["prune"] as? [String: Any])?["objects_deleted"] as? Int else {
            throw TestSupportError("reference forget failed: \(run.stdout) \(run.stderr)")
        }
        onlyInOldest = deleted
        try FileManager.default.removeItem(atPath: reference)
    }
}

/// 200 MB of pseudo-random files (40 of 5 MB) and a hundred small ones, for runs long enough to
/// be killed at random moments or to overlap with others.
private final class BigTreeFixture: Sendable {
    let scratch: CrashScratch
    let path: String
    let tree: CrashTree

    static let shared = Result<BigTreeFixture, any Error> { try BigTreeFixture() }

    private init() throws {
        scratch = try CrashScratch("big-tree", keepUntilExit: true)
        path = scratch.file("storage")
        try makeCrashTree(at: path, seed: 41, smallFiles: 100)
        for index in 0..<40 {
            try writeFile(path + "/big-\(index).bin", pseudoRandomBytes(5_000_000, seed: 4100 + UInt64(index)))
        }
        try stampCrashTree(path, wholeSeconds: false, seed: 41)
        tree = try readTree(path)
    }
}

// MARK: - Fault injection: kills at chosen mutations

@Suite struct CrashSafetyFaultInjectionTests {
    @Test(arguments: CrashKillPoint.allCases)
    func snapshotKilledAtAMutation(point: CrashKillPoint) throws {
        let fixture = try SnapshotFixture.shared.get()
        #expect(fixture.mutations > 10, "a snapshot with so few mutations tests little")
        let scratch = try CrashScratch("snapshot-kill")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        try copyCrashRepository(fixture.repo, to: repo)
        let kill = point.value(total: fixture.mutations)
        let context = "snapshot killed at mutation \(kill) of \(fixture.mutations)"
        let arguments = ["--repo", repo, "snapshot", "--no-db", "--storage", fixture.source]

        let killed = try crashSnap(arguments, killAfter: kill)
        let made = crashRecordIDs(repo).subtracting(fixture.committed.keys)
        if kill <= fixture.mutations {
            expectKilled(killed, context)
            #expect(made.isEmpty, "\(context): a record was written: \(made)")
        } else {
            expectExit(killed, 0, context)
            #expect(made == [crashSnapshotID(killed)], "\(context): records made: \(made)")
        }
        try expectCheckPasses(repo, context)
        for (id, tree) in fixture.committed { try expectRestoresExactly(repo, id, tree, in: scratch, context) }
        for id in made { try expectRestoresExactly(repo, id, fixture.expected, in: scratch, context) }

        let garbage = try expectPruneCleansUp(repo, context)
        if kill <= fixture.mutations {
            #expect(garbage.total > 0, "\(context): the killed run left nothing behind, so prune was not tested")
        }
        try expectCheckPasses(repo, context + ", after prune")

        let again = try crashSnap(arguments)
        expectExit(again, 0, context + ", run again")
        try expectRestoresExactly(repo, crashSnapshotID(again), fixture.expected, in: scratch, context + ", run again")
        try expectCheckPasses(repo, context + ", run again")
    }

    /// A restore's storage thread may still be ending, inside OpenSSL's thread cleanup, as snap
    /// returns from main; OpenSSL's exit handler used to free the lock that cleanup takes, and a
    /// finished restore died of SIGSEGV (seen once in CI). The hook keeps threads hashing, and others
    /// ending, at every exit.
    @Test func threadsStillHashingAsSnapExitsDoNotCrashIt() throws {
        let scratch = try CrashScratch("hash-at-exit")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        var environment = crashEnvironment()
        environment["SNAP_TEST_HASH_AT_EXIT"] = "1"
        for round in 1...30 {
            let run = try runProcess(snapBinary, ["--repo", repo, "list"], environment: environment)
            let result = CrashResult(status: run.status, signaled: run.signaled, stdout: run.stdout, stderr: run.stderr)
            expectExit(result, 0, "run \(round) of `snap list` with threads hashing as it exits")
            if result.signaled { break }
        }
    }

    @Test(arguments: CrashImportKillPoint.allCases)
    func importKilledAtAMutation(point: CrashImportKillPoint) throws {
        let fixture = try ImportFixture.shared.get()
        #expect(fixture.firstMutations > 5 && fixture.mutations > fixture.firstMutations + 5)
        let scratch = try CrashScratch("import-kill")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        try copyCrashRepository(fixture.repo, to: repo)
        let kill = point.value(first: fixture.firstMutations, total: fixture.mutations)
        let context =
            "import killed at mutation \(kill) (first archive: \(fixture.firstMutations), both: \(fixture.mutations))"
        let arguments = ["--repo", repo, "import", fixture.archives]

        let killed = try crashSnap(arguments, killAfter: kill)
        let made = crashRecordIDs(repo).subtracting(fixture.committed.keys)
        let expectedCount = kill <= fixture.firstMutations ? 0 : kill <= fixture.mutations ? 1 : 2
        if kill <= fixture.mutations { expectKilled(killed, context) } else { expectExit(killed, 0, context) }
        #expect(made.count == expectedCount, "\(context): \(made.count) record(s) written, expected \(expectedCount)")
        try expectCheckPasses(repo, context)
        for (id, tree) in fixture.committed { try expectRestoresExactly(repo, id, tree, in: scratch, context) }
        for id in made {
            let tree = try fixture.tree(of: repo, id)
            #expect(tree != nil, "\(context): record \(id.prefix(8)) names no archive of ours")
            // Archives are imported oldest first: a single record must be the first archive's.
            if expectedCount == 1 { #expect(tree == fixture.trees[fixture.names[0]], "\(context): wrong archive") }
            if let tree { try expectRestoresExactly(repo, id, tree, in: scratch, context) }
        }

        let garbage = try expectPruneCleansUp(repo, context)
        if kill <= fixture.mutations {
            #expect(garbage.total > 0, "\(context): the killed run left nothing behind, so prune was not tested")
        }
        try expectCheckPasses(repo, context + ", after prune")

        let again = try crashSnap(arguments)
        expectExit(again, 0, context + ", run again")
        if expectedCount > 0 {
            #expect(again.stderr.contains("skipped"), "\(context): the archive imported before was not skipped")
        }
        let all = crashRecordIDs(repo).subtracting(fixture.committed.keys)
        #expect(all.count == 2, "\(context): after the second run \(all.count) imported record(s)")
        for id in all {
            if let tree = try fixture.tree(of: repo, id) {
                try expectRestoresExactly(repo, id, tree, in: scratch, context + ", run again")
            }
        }
        try expectCheckPasses(repo, context + ", run again")
    }

    /// `forget --keep-last 2` of five snapshots removes three records: mutations 1 to 3; 4 is past
    /// the last.
    @Test(arguments: [1, 2, 3, 4])
    func forgetKilledAtARecord(kill: Int) throws {
        let fixture = try HistoryFixture.shared.get()
        try forgetKilled(fixture, kill: kill, prune: false)
    }

    /// `forget --keep-last 2 --prune`: three record removals, then the deletions of the objects only
    /// those snapshots needed.
    @Test(arguments: CrashKillPoint.allCases.filter { $0 != .threeQuarters })
    func forgetWithPruneKilledAtAMutation(point: CrashKillPoint) throws {
        let fixture = try HistoryFixture.shared.get()
        #expect(fixture.onlyInOldest >= 3, "the forgotten snapshots should free several objects")
        let total = 3 + fixture.onlyInOldest
        let kill =
            switch point {
            case .first: 1
            case .second: 3  // every record removed, no object deleted yet
            case .fifth: 4  // the first object deleted
            default: point.value(total: total)
            }
        try forgetKilled(fixture, kill: kill, prune: true)
    }

    private func forgetKilled(_ fixture: HistoryFixture, kill: Int, prune: Bool) throws {
        let scratch = try CrashScratch("forget-kill")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        try copyCrashRepository(fixture.repo, to: repo)
        let total = 3 + (prune ? fixture.onlyInOldest : 0)
        let context = "forget\(prune ? " --prune" : "") killed at mutation \(kill) of \(total)"
        let arguments = ["--repo", repo, "forget", "--keep-last", "2"] + (prune ? ["--prune"] : [])
        let newest = Set(fixture.ids.suffix(2))
        let objectsBefore = crashStoredObjects(repo)

        let killed = try crashSnap(arguments, killAfter: kill)
        if kill <= total { expectKilled(killed, context) } else { expectExit(killed, 0, context) }
        let remaining = crashRecordIDs(repo)
        #expect(remaining.isSubset(of: fixture.ids), "\(context): records appeared: \(remaining)")
        #expect(newest.isSubset(of: remaining), "\(context): a snapshot the policy keeps was removed")
        #expect(
            fixture.ids.count - remaining.count == min(kill, 3),
            "\(context): \(fixture.ids.count - remaining.count) record(s) removed, expected \(min(kill, 3))")
        if prune {
            // Deletions run on several threads: others may finish theirs before the kill lands.
            let deleted = objectsBefore.count - crashStoredObjects(repo).count
            let least = min(max(kill - 3, 0), fixture.onlyInOldest)
            #expect(
                deleted >= least && deleted <= (kill <= 3 ? 0 : fixture.onlyInOldest),
                "\(context): \(deleted) object(s) deleted")
        }
        try expectCheckPasses(repo, context)
        for id in remaining { try expectRestoresExactly(repo, id, fixture.trees[id]!, in: scratch, context) }

        try expectPruneCleansUp(repo, context)
        try expectCheckPasses(repo, context + ", after prune")
        for id in remaining {
            try expectRestoresExactly(repo, id, fixture.trees[id]!, in: scratch, context + ", after prune")
        }

        let again = try crashSnap(arguments)
        expectExit(again, 0, context + ", run again")
        #expect(crashRecordIDs(repo) == newest, "\(context): after the second run: \(crashRecordIDs(repo))")
        try expectCheckPasses(repo, context + ", run again")
    }

    @Test(arguments: CrashKillPoint.allCases.filter { $0 != .threeQuarters })
    func pruneKilledAtADeletion(point: CrashKillPoint) throws {
        let history = try HistoryFixture.shared.get()
        let scratch = try CrashScratch("prune-kill")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        try copyCrashRepository(history.repo, to: repo)
        // Garbage of both kinds: the objects of three forgotten snapshots, and what a snapshot run
        // killed while publishing its objects leaves (published objects and temporary files).
        expectExit(try crashSnap(["--repo", repo, "forget", "--keep-last", "2"]), 0, "forget")
        let extra = scratch.file("extra")
        try makeCrashTree(at: extra, seed: 51, smallFiles: 40, largeFiles: [1 << 20])
        let reference = scratch.file("reference")
        try copyCrashRepository(repo, to: reference)
        let run = try crashSnap(["--repo", reference, "snapshot", "--no-db", "--storage", extra])
        expectExit(run, 0, "reference snapshot")
        let newObjects = try crashNewObjects(reference, crashSnapshotID(run))
        let interrupted = try crashSnap(
            ["--repo", repo, "snapshot", "--no-db", "--storage", extra], killAfter: newObjects + newObjects / 2 + 1)
        expectKilled(interrupted, "snapshot interrupted while publishing")
        let leftovers = crashLeftovers(repo)
        let referenced = try crashReferencedObjects(repo)
        let stored = crashStoredObjects(repo)
        let total = stored.subtracting(referenced).count
        #expect(!leftovers.isEmpty && total > history.onlyInOldest, "the setup left no garbage of both kinds")
        let kill = point.value(total: total)
        let context = "prune killed at deletion \(kill) of \(total)"

        let killed = try crashSnap(["--repo", repo, "prune"], killAfter: kill)
        if kill <= total {
            expectKilled(killed, context)
            // Deletions run on several threads: others may finish theirs before the kill lands.
            let deleted = stored.count - crashStoredObjects(repo).count
            #expect(deleted >= kill && deleted <= total, "\(context): \(deleted) object(s) deleted")
            #expect(Set(crashLeftovers(repo)).isSubset(of: leftovers), "\(context): temporary files appeared")
        } else {
            expectExit(killed, 0, context)
            #expect(crashLeftovers(repo).isEmpty)
        }
        #expect(crashStoredObjects(repo).isSuperset(of: referenced), "\(context): a referenced object was deleted")
        #expect(crashRecordIDs(repo) == Set(history.ids.suffix(2)))
        try expectCheckPasses(repo, context)
        for id in history.ids.suffix(2) {
            try expectRestoresExactly(repo, id, history.trees[id]!, in: scratch, context)
        }

        let remaining = crashStoredObjects(repo).subtracting(referenced).count
        let garbage = try expectPruneCleansUp(repo, context + ", run again")
        #expect(garbage.unreferenced == remaining, "\(context): the second prune found \(garbage)")
        if kill < total { #expect(remaining > 0, "\(context): the killed prune deleted everything") }
        try expectCheckPasses(repo, context + ", run again")
        for id in history.ids.suffix(2) {
            try expectRestoresExactly(repo, id, history.trees[id]!, in: scratch, context + ", run again")
        }
    }
}

// MARK: - Fault injection with a database

/// Skips where PostgreSQL is not installed, except under CI, where the suite runs and fails.
private let crashNeedsServer = Testing.ConditionTrait.enabled(
    if: TestCluster.isAvailable, Comment(rawValue: TestCluster.unavailableReason))

/// A database and a storage folder, a repository with one snapshot of both, and both changed
/// since.
private final class DatabaseFixture: Sendable {
    let cluster: TestCluster
    let scratch: CrashScratch
    let repo: String
    let source: String
    let database: String
    let committedID: String
    let committedTree: CrashTree
    let committedDump: String
    let expectedTree: CrashTree
    let expectedDump: String
    let mutations: Int

    static let shared = Result<DatabaseFixture, any Error> { try DatabaseFixture(cluster: TestCluster.start()) }

    private init(cluster: TestCluster) throws {
        self.cluster = cluster
        scratch = try CrashScratch("database-fixture", keepUntilExit: true)
        repo = scratch.file("repo")
        source = scratch.file("storage")
        database = cluster.uniqueDatabaseName("crash")
        try cluster.createDatabase(database)
        try cluster.psql(
            """
            CREATE TABLE items (id int PRIMARY KEY, name text, body text, payload bytea);
            INSERT INTO items SELECT g, 'item ' || g, repeat(md5(g::text), 8),
                decode(md5((g * 7)::text) || md5((g * 13)::text), 'hex') FROM generate_series(1, 8000) g;
            CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, kind text);
            INSERT INTO events (at, kind) SELECT '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',
                'kind ' || (g % 17) FROM generate_series(1, 20000) g;
            """, database: database)
        try makeCrashTree(at: source, seed: 61, smallFiles: 60, largeFiles: [1 << 20])
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        let first = try crashSnap(
            ["--repo", repo, "snapshot", "--db", cluster.conninfo(database: database), "--storage", source])
        guard first.succeeded else { throw TestSupportError("first snapshot failed: \(first.stderr)") }
        committedID = crashSnapshotID(first)
        committedTree = try readTree(source)
        committedDump = try cluster.pgDumpPlain(database: database)

        try cluster.psql(
            """
            UPDATE items SET body = 'changed ' || id WHERE id % 250 = 0;
            INSERT INTO events (at, kind) SELECT now(), 'later' FROM generate_series(1, 3000);
            CREATE TABLE later (x int);
            """, database: database)
        try changeCrashTree(at: source, seed: 62, newLarge: 1 << 20)
        expectedTree = try readTree(source)
        expectedDump = try cluster.pgDumpPlain(database: database)

        let reference = scratch.file("reference")
        try copyCrashRepository(repo, to: reference)
        let run = try crashSnap(
            ["--repo", reference, "snapshot", "--db", cluster.conninfo(database: database), "--storage", source])
        guard run.succeeded else { throw TestSupportError("reference snapshot failed: \(run.stderr)") }
        mutations = 2 * (try crashNewObjects(reference, crashSnapshotID(run))) + 1
        try FileManager.default.removeItem(atPath: reference)
    }

    /// Restores a snapshot into a new database and folder and compares both.
    func expectRestore(
        _ repo: String, _ id: String, dump: String, tree: CrashTree, _ context: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let target = cluster.uniqueDatabaseName("crash_restored")
        try cluster.createDatabase(target)
        defer { try? cluster.dropDatabase(target) }
        let folder = scratch.file("restored-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let restore = try crashSnap(
            ["--repo", repo, "restore", id, "--db", cluster.conninfo(database: target), "--storage-to", folder])
        expectExit(restore, 0, "\(context): restore of \(id.prefix(8))", sourceLocation: sourceLocation)
        guard restore.succeeded else { return }
        #expect(
            try cluster.pgDumpPlain(database: target) == dump,
            "\(context): the database of \(id.prefix(8)) restores differently", sourceLocation: sourceLocation)
        let diff = differences(tree, try readTree(folder))
        #expect(
            diff.isEmpty, "\(context): storage of \(id.prefix(8)): \(diff.prefix(10))", sourceLocation: sourceLocation)
    }
}

@Suite(.serialized, crashNeedsServer) struct CrashSafetyDatabaseTests {
    @Test(arguments: CrashKillPoint.allCases)
    func databaseSnapshotKilledAtAMutation(point: CrashKillPoint) throws {
        let fixture = try DatabaseFixture.shared.get()
        let cluster = fixture.cluster
        #expect(fixture.mutations > 10)
        let scratch = try CrashScratch("database-kill")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        try copyCrashRepository(fixture.repo, to: repo)
        let kill = point.value(total: fixture.mutations)
        let context = "database snapshot killed at mutation \(kill) of \(fixture.mutations)"
        let arguments = [
            "--repo", repo, "snapshot", "--db", cluster.conninfo(database: fixture.database), "--storage",
            fixture.source,
        ]

        let killed = try crashSnap(arguments, killAfter: kill)
        let made = crashRecordIDs(repo).subtracting([fixture.committedID])
        if kill <= fixture.mutations {
            expectKilled(killed, context)
            #expect(made.isEmpty, "\(context): a record was written")
        } else {
            expectExit(killed, 0, context)
            #expect(made.count == 1)
        }
        // Nothing of the killed run stays behind: its pg_dump ends and the server drops its sessions.
        let sessionsGone = try crashWaitUntil(timeout: 20) {
            try cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = '\(fixture.database)'") == "0"
        }
        #expect(sessionsGone, "\(context): sessions of the killed run are still open on the source database")
        #expect(crashProcesses(mentioning: repo).isEmpty, "\(context): a process of the killed run is left")

        try expectCheckPasses(repo, context)
        try fixture.expectRestore(
            repo, fixture.committedID, dump: fixture.committedDump, tree: fixture.committedTree, context)
        for id in made {
            try fixture.expectRestore(repo, id, dump: fixture.expectedDump, tree: fixture.expectedTree, context)
        }

        let garbage = try expectPruneCleansUp(repo, context)
        if kill <= fixture.mutations {
            #expect(garbage.total > 0, "\(context): the killed run left nothing behind, so prune was not tested")
        }
        try expectCheckPasses(repo, context + ", after prune")

        let again = try crashSnap(arguments)
        expectExit(again, 0, context + ", run again")
        try fixture.expectRestore(
            repo, crashSnapshotID(again), dump: fixture.expectedDump, tree: fixture.expectedTree,
            context + ", run again")
        try expectCheckPasses(repo, context + ", run again")
    }
}

// MARK: - Real kill -9 at random moments

@Suite struct CrashSafetySigkillTests {
    @Test func snapshotKilledByTheTestAtRandomMoments() throws {
        let big = try BigTreeFixture.shared.get()
        let scratch = try CrashScratch("sigkill")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let base = scratch.file("base")
        let small = scratch.file("small")
        try makeCrashTree(at: small, seed: 71, smallFiles: 50, largeFiles: [500_000])
        let smallTree = try readTree(small)
        expectExit(try crashSnap(["--repo", base, "init"]), 0, "init")
        let first = try crashSnap(["--repo", base, "snapshot", "--no-db", "--storage", small])
        expectExit(first, 0, "first snapshot")
        let firstID = crashSnapshotID(first)

        let delays = [
            Int.random(in: 10...60), Int.random(in: 100...300), Int.random(in: 300...600), Int.random(in: 600...900),
        ]
        var interrupted = 0
        var repo = ""
        for (index, delay) in delays.enumerated() {
            repo = scratch.file("repo-\(index)")
            try copyCrashRepository(base, to: repo)
            let context = "snapshot killed with kill -9 after \(delay) ms"
            let started = Date()
            let child = try CrashChild(
                ["--repo", repo, "snapshot", "--no-db", "--storage", big.path], outputIn: scratch.path)
            if delay >= 100 {
                // These kills must leave something for prune: on a loaded machine the first
                // object file can come later than 100 ms, so the kill waits for it.
                _ = crashWaitUntil(timeout: 30) { !crashLeftovers(repo).isEmpty || child.poll() != nil }
            }
            let remaining = Double(delay) / 1000 - Date().timeIntervalSince(started)
            if remaining > 0 { usleep(UInt32(remaining * 1_000_000)) }
            child.kill()
            let result = child.wait()
            let made = crashRecordIDs(repo).subtracting([firstID])
            if result.signaled {
                expectKilled(result, context)
                if made.isEmpty { interrupted += 1 }
            } else {
                expectExit(result, 0, context + " (it finished first)")
            }
            #expect(made.count <= 1)
            #expect(crashProcesses(mentioning: repo).isEmpty, "\(context): a process is left behind")

            try expectCheckPasses(repo, context)
            try expectRestoresExactly(repo, firstID, smallTree, in: scratch, context)
            // A record written before the kill landed is a complete snapshot.
            for id in made { try expectRestoresExactly(repo, id, big.tree, in: scratch, context) }
            let garbage = try expectPruneCleansUp(repo, context)
            if delay >= 100 && made.isEmpty {
                #expect(garbage.total > 0, "\(context): nothing was left behind, so prune was not tested")
            }
            try expectCheckPasses(repo, context + ", after prune")
            try expectRestoresExactly(repo, firstID, smallTree, in: scratch, context + ", after prune")
            if index < delays.count - 1 { try FileManager.default.removeItem(atPath: repo) }
        }
        #expect(interrupted >= 2, "only \(interrupted) kill(s) interrupted a snapshot: the snapshot is too quick")

        let again = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", big.path])
        expectExit(again, 0, "snapshot after the kills")
        try expectRestoresExactly(repo, crashSnapshotID(again), big.tree, in: scratch, "snapshot after the kills")
        try expectCheckPasses(repo, "snapshot after the kills")
    }
}

// MARK: - Read-only repository

@Suite struct ReadOnlyRepositoryTests {
    /// An offsite disk mounted read-only: list, check, restore and export work; a snapshot fails
    /// with one line and changes nothing.
    @Test(
        .enabled(
            if: geteuid() == 0 || TestCluster.isCI,
            "a read-only bind mount needs root; run the tests as root to cover it (under CI=true this runs and fails)"
        ))
    func aRepositoryOnAReadOnlyMountCanBeReadAndRestoredFrom() throws {
        let scratch = try CrashScratch("read-only")
        let repo = scratch.file("repo")
        let source = scratch.file("storage")
        try makeCrashTree(at: source, seed: 91, smallFiles: 20, largeFiles: [100_000])
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        expectExit(try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", source]), 0, "snapshot")
        let mountPoint = scratch.file("offsite")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        defer { withExtendedLifetime(scratch) {} }
        // The layout of the contract has no lock file: a repository may come without one.
        try FileManager.default.removeItem(atPath: repo + "/lock")
        try withBindMount(repo, at: mountPoint, readOnly: true) {
            expectExit(try crashSnap(["--repo", mountPoint, "list"]), 0, "list")
            expectExit(try crashSnap(["--repo", mountPoint, "check", "--read-data"]), 0, "check")
            let restored = scratch.file("restored")
            expectExit(
                try crashSnap(["--repo", mountPoint, "restore", "latest", "--no-db", "--storage-to", restored]), 0,
                "restore")
            #expect(differences(try readTree(source), try readTree(restored)).isEmpty)
            let refused = try crashSnap(["--repo", mountPoint, "snapshot", "--no-db", "--storage", source])
            #expect(refused.status != 0)
            #expect(stderrLines(refused).count == 1, "expected one line on stderr, got: \(refused.stderr)")
        }
        #expect(crashRecordIDs(repo).count == 1)
    }
}

// MARK: - Full disk

@Suite struct CrashSafetyFullDiskTests {
    @Test(
        .enabled(
            if: geteuid() == 0 || TestCluster.isCI,
            "mounting a small tmpfs needs root; run the tests as root to cover a full disk (under CI=true this runs and fails)"
        ))
    func snapshotOnAFullDiskFailsCleanlyAndTheRepositoryRecovers() throws {
        let scratch = try CrashScratch("full-disk")
        let mountPoint = scratch.file("tmpfs")
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        let mount = try runProcess("mount", ["-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", mountPoint])
        try #require(
            mount.succeeded,
            "cannot mount a 20 MB tmpfs at \(mountPoint) (status \(mount.status)): \(mount.stderr); the full-disk test needs it"
        )
        defer {
            let unmount = try? runProcess("umount", [mountPoint])
            if unmount?.succeeded != true { _ = try? runProcess("umount", ["-l", mountPoint]) }
            withExtendedLifetime(scratch) {}
        }
        let repo = mountPoint + "/repo"
        let source = scratch.file("storage")
        try makeCrashTree(at: source, seed: 81, smallFiles: 40, largeFiles: [200_000])
        let smallTree = try readTree(source)
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        let first = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", source])
        expectExit(first, 0, "small snapshot")
        let firstID = crashSnapshotID(first)

        // 30 MB of incompressible data does not fit in 20 MB.
        for index in 0..<6 {
            try writeFile(source + "/big-\(index).bin", pseudoRandomBytes(5_000_000, seed: 8100 + UInt64(index)))
        }
        let full = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", source])
        expectExit(full, 1, "snapshot on a full disk")
        #expect(stderrLines(full).count == 1, "expected one line on stderr, got: \(full.stderr)")
        #expect(
            full.stderr.contains("No space left on device") || full.stderr.contains(String(cString: strerror(ENOSPC))),
            "the message does not name the full disk: \(full.stderr)")
        #expect(crashRecordIDs(repo) == [firstID], "a record was written for the failed snapshot")
        try expectCheckPasses(repo, "after the full disk")
        try expectRestoresExactly(repo, firstID, smallTree, in: scratch, "after the full disk")

        for index in 0..<6 { try FileManager.default.removeItem(atPath: source + "/big-\(index).bin") }
        try stampCrashTree(source, wholeSeconds: false, seed: 82)
        let garbage = try expectPruneCleansUp(repo, "prune after the full disk")
        #expect(garbage.total > 0, "the failed snapshot left nothing behind, so prune was not tested")
        var space = statvfs()
        #expect(statvfs(repo, &space) == 0)
        #expect(
            UInt64(space.f_bavail) * UInt64(space.f_frsize) > 15 << 20, "prune did not give the space back")
        try expectCheckPasses(repo, "after prune")

        let later = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", source])
        expectExit(later, 0, "small snapshot after prune")
        try expectRestoresExactly(repo, crashSnapshotID(later), try readTree(source), in: scratch, "after prune")
        try expectRestoresExactly(repo, firstID, smallTree, in: scratch, "after prune")
        try expectCheckPasses(repo, "after the new snapshot")
    }
}

// MARK: - Commands at the same time

@Suite struct CrashSafetyConcurrencyTests {
    @Test func twoSnapshotsOfDifferentTreesAtOnce() throws {
        let scratch = try CrashScratch("two-snapshots")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        let shared = pseudoRandomBytes(6_000_000, seed: 91)
        var trees: [CrashTree] = []
        var paths: [String] = []
        for seed: UInt64 in [92, 93] {
            let path = scratch.file("storage-\(seed)")
            try makeCrashTree(at: path, seed: seed, smallFiles: 200, largeFiles: [6_000_000])
            // The same big file in both: both runs store the same chunks at the same time.
            try writeFile(path + "/shared.bin", shared)
            try stampCrashTree(path, wholeSeconds: false, seed: seed)
            trees.append(try readTree(path))
            paths.append(path)
        }
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        let children = try paths.map {
            try CrashChild(["--repo", repo, "snapshot", "--no-db", "--storage", $0], outputIn: scratch.path)
        }
        let results = children.map { $0.wait() }
        for (index, result) in results.enumerated() {
            expectExit(result, 0, "snapshot \(index) of two at once")
            try expectRestoresExactly(repo, crashSnapshotID(result), trees[index], in: scratch, "snapshot \(index)")
        }
        #expect(crashRecordIDs(repo) == Set(results.map(crashSnapshotID)))
        #expect(crashLeftovers(repo).isEmpty, "two snapshots at once left temporary files")
        #expect(crashStoredObjects(repo) == (try crashReferencedObjects(repo)), "unreferenced objects were stored")
        try expectCheckPasses(repo, "two snapshots at once")
    }

    enum Start: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// Both started at the same instant: either may take the lock first.
        case together
        /// Prune started once the snapshot holds its lock: prune must wait for it.
        case pruneWhileSnapshotHoldsTheLock
        var testDescription: String { rawValue }
    }

    /// A killed run published every object of a tree but wrote no record; a new snapshot of the
    /// same tree reuses all of those objects, which a prune beside it would see as garbage.
    @Test(arguments: Start.allCases)
    func snapshotAndPruneWithWaitBothSucceed(start: Start) throws {
        let big = try BigTreeFixture.shared.get()
        let scratch = try CrashScratch("snapshot-and-prune")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        let small = scratch.file("small")
        try makeCrashTree(at: small, seed: 95, smallFiles: 30)
        let smallTree = try readTree(small)
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        let first = try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", small])
        expectExit(first, 0, "first snapshot")

        let reference = scratch.file("reference")
        try copyCrashRepository(repo, to: reference)
        let run = try crashSnap(["--repo", reference, "snapshot", "--no-db", "--storage", big.path])
        expectExit(run, 0, "reference snapshot")
        let newObjects = try crashNewObjects(reference, crashSnapshotID(run))
        try FileManager.default.removeItem(atPath: reference)
        let orphans = try crashSnap(
            ["--repo", repo, "snapshot", "--no-db", "--storage", big.path], killAfter: 2 * newObjects + 1)
        expectKilled(orphans, "snapshot killed just before its record")
        let unreferenced = crashStoredObjects(repo).subtracting(try crashReferencedObjects(repo))
        #expect(unreferenced.count == newObjects, "the killed run should have published all its objects")

        let arguments = ["--repo", repo, "snapshot", "--no-db", "--storage", big.path]
        let snapshot: CrashChild
        let prune: CrashChild
        switch start {
        case .together:
            snapshot = try CrashChild(arguments, outputIn: scratch.path)
            prune = try CrashChild(["--repo", repo, "prune", "--wait", "60"], outputIn: scratch.path)
        case .pruneWhileSnapshotHoldsTheLock:
            snapshot = try CrashChild(arguments, outputIn: scratch.path)
            let locked = crashWaitUntil(timeout: 20) {
                crashLockHeld(by: snapshot.pid, on: repo + "/lock") != nil || snapshot.poll() != nil
            }
            #expect(locked && snapshot.poll() == nil, "the snapshot never held the lock while running")
            prune = try CrashChild(["--repo", repo, "prune", "--wait", "60"], outputIn: scratch.path)
        }
        let snapshotResult = snapshot.wait()
        let pruneResult = prune.wait()
        expectExit(snapshotResult, 0, "snapshot beside prune")
        expectExit(pruneResult, 0, "prune --wait 60 beside a snapshot")
        // Whether prune had to wait depends on timing (a snapshot that reuses every object, or
        // finds every file in the files cache, may be done first); that it waits when the lock
        // is held is tested deterministically in PruneTests. Here what matters is that both end
        // well and nothing the snapshot needs was deleted.
        try expectCheckPasses(repo, "snapshot beside prune")
        try expectRestoresExactly(repo, crashSnapshotID(snapshotResult), big.tree, in: scratch, "snapshot beside prune")
        try expectRestoresExactly(repo, crashSnapshotID(first), smallTree, in: scratch, "snapshot beside prune")
        // Whichever ran first, nothing is left over: prune after the snapshot deletes the garbage,
        // and a snapshot after prune stores only what it needs.
        #expect(crashLeftovers(repo).isEmpty)
        #expect(crashStoredObjects(repo) == (try crashReferencedObjects(repo)))
    }

    @Test func pruneAndForgetWithoutWaitFailWhileASnapshotRuns() throws {
        let big = try BigTreeFixture.shared.get()
        let scratch = try CrashScratch("busy")
        defer { withExtendedLifetime(scratch) {} }  // the folders live to the end of the test
        let repo = scratch.file("repo")
        let small = scratch.file("small")
        try makeCrashTree(at: small, seed: 97, smallFiles: 10)
        expectExit(try crashSnap(["--repo", repo, "init"]), 0, "init")
        expectExit(try crashSnap(["--repo", repo, "snapshot", "--no-db", "--storage", small]), 0, "first snapshot")

        let snapshot = try CrashChild(
            ["--repo", repo, "snapshot", "--no-db", "--storage", big.path], outputIn: scratch.path)
        let locked = crashWaitUntil(timeout: 20) {
            crashLockHeld(by: snapshot.pid, on: repo + "/lock") != nil || snapshot.poll() != nil
        }
        #expect(locked && snapshot.poll() == nil, "the snapshot never held the lock while running")
        let objectsBefore = crashStoredObjects(repo)
        for command in [["prune"], ["forget", "--keep-last", "1"]] {
            let busy = try crashSnap(["--repo", repo] + command)
            let context = "\(command.joined(separator: " ")) while a snapshot runs"
            expectExit(busy, 4, context)
            #expect(stderrLines(busy).count == 1, "\(context): expected one line on stderr: \(busy.stderr)")
            #expect(busy.stderr.contains("--wait"), "\(context): the message does not say how to wait")
        }
        #expect(snapshot.poll() == nil, "the snapshot ended before the prune: the test proved nothing")
        #expect(crashStoredObjects(repo).isSuperset(of: objectsBefore), "a refused prune deleted objects")
        let result = snapshot.wait()
        expectExit(result, 0, "the snapshot the prune waited for")
        #expect(crashRecordIDs(repo).count == 2)
        try expectCheckPasses(repo, "after the refused prune")
    }
}
