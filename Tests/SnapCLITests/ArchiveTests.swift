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

/// End-to-end tests of `snap export` and `snap import`: the classic backup_*.tar.gz.
@Suite struct ArchiveTests {}

// MARK: - With a database

extension ArchiveTests {
    @Suite(needsServer) struct WithDatabase {
        let cluster: TestCluster

        init() throws { cluster = try TestCluster.start() }

        /// A repository with one snapshot of a fresh shop database and a storage tree; returns the
        /// snapshot id and the database's plain dump at snapshot time.
        private func snapshotShop(folder: TemporaryDirectory, bigFileSize: Int = 5 << 20) throws -> (
            id: String, dump: String
        ) {
            let database = try makeShopDatabase(cluster)
            try makeStorageTree(at: folder.file("storage"), bigFileSize: bigFileSize)
            #expect(try snap("--repo", folder.file("repo"), "init").status == 0)
            let made = try snap(
                "--repo", folder.file("repo"), "snapshot", "--db", cluster.conninfo(database: database), "--storage",
                folder.file("storage"), "--json")
            #expect(made.status == 0, "\(made.stderr)")
            let dump = try cluster.pgDumpPlain(database: database)
            // Later changes must not reach the export: it is the snapshot, not the live database.
            try cluster.psql("DELETE FROM orders WHERE id % 2 = 0; CREATE TABLE later (x int);", database: database)
            return (try snapshotID(made.stdout), dump)
        }

        @Test func exportIsAClassicBackupThatStandardToolsRead() throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let (id, dumpAtSnapshot) = try snapshotShop(folder: folder)
            let source = try readTree(folder.file("storage"))

            let out = folder.file("out")
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let export = try snap("--repo", repo, "export", id, "-o", out)
            #expect(export.status == 0, "\(export.stderr)")
            let shown = try parseJSON(try snap("--repo", repo, "show", id, "--json").stdout) as? [String: Any]
            let time = shown?["time"] as? String ?? ""
            #expect(time.count == 20 && time.hasSuffix("Z"), "\(time)")
            let name = backupName(forTime: time)
            let archive = out + "/" + name
            #expect(export.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == archive)
            #expect(folderListing(out) == [name], "only the archive, no temporary file left behind")

            // GNU tar extracts it without a word.
            let extracted = folder.file("extracted")
            try FileManager.default.createDirectory(atPath: extracted, withIntermediateDirectories: true)
            let tar = try shell("tar --same-permissions -xzf \(shellQuoted(archive)) -C \(shellQuoted(extracted))")
            #expect(tar.status == 0)
            #expect(tar.stderr.isEmpty, "\(tar.stderr)")
            #expect(folderListing(extracted) == ["database.dump", "storage"])

            // Entry by entry: content, mode, mtime to the nanosecond (pax), symlinks.
            let diff = differences(source, try readTree(extracted + "/storage"))
            #expect(diff.isEmpty, "\(diff.prefix(20).joined(separator: "\n"))")
            #expect(source.count >= 25)

            // The dump is pg_dump's custom format: pg_restore lists it and restores the snapshot's data.
            let dumpFile = extracted + "/database.dump"
            let list = try cluster.runClient("pg_restore", ["-l", dumpFile])
            #expect(list.succeeded, "\(list.stderr)")
            #expect(list.stdout.contains("TABLE public customers") && list.stdout.contains("VIEW public paid_orders"))
            let target = cluster.uniqueDatabaseName("fromexport")
            try cluster.createDatabase(target)
            let restore = try cluster.runClient("pg_restore", ["-d", target, dumpFile])
            #expect(restore.succeeded && restore.stderr.isEmpty, "\(restore.stderr)")
            #expect(try cluster.pgDumpPlain(database: target) == dumpAtSnapshot)

            // Python's tarfile reads every member without a warning.
            let python = try run(
                "/usr/bin/env",
                [
                    "python3", "-W", "error", "-c", "import tarfile,sys; t=tarfile.open(sys.argv[1]); [m for m in t]",
                    archive,
                ])
            #expect(python.status == 0 && python.stdout.isEmpty && python.stderr.isEmpty, "\(python.stderr)")
        }

        @Test func exportToStandardOutputIsTheSameArchiveAndStopsQuietly() throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let (id, _) = try snapshotShop(folder: folder)
            let out = folder.file("out")
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let toFolder = try snap("--repo", repo, "export", id, "-o", out)
            #expect(toFolder.status == 0, "\(toFolder.stderr)")
            let archive = toFolder.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

            let piped = folder.file("piped.tar.gz")
            let toStdout = try shell("\(snapCommand(repo: repo)) export \(id) -o - > \(shellQuoted(piped))")
            #expect(toStdout.status == 0, "\(toStdout.stderr)")
            #expect(toStdout.stdout.isEmpty)
            #expect(try shell("gzip -t \(shellQuoted(piped))").status == 0)
            let tarHashes = try [archive, piped].map {
                try shell("gzip -dc \(shellQuoted($0)) | sha256sum").stdout
            }
            #expect(tarHashes[0] == tarHashes[1], "the tar inside differs between -o FOLDER and -o -")

            // A reader that stops early: snap ends at once, says nothing, leaves no process behind.
            let errors = folder.file("head.err")
            let start = Date()
            let head = try shell(
                "timeout 60 \(snapCommand(repo: repo)) export \(id) -o - 2> \(shellQuoted(errors)) | head -c 100 | wc -c; "
                    + "echo \"${PIPESTATUS[0]}\"")
            let lines = head.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            #expect(lines.first == "100")
            #expect(lines.last == "0" || lines.last == "141", "snap ended with status \(lines.last ?? "?") (124: hung)")
            #expect(try String(contentsOfFile: errors, encoding: .utf8).isEmpty)
            #expect(head.stderr.isEmpty, "\(head.stderr)")
            #expect(Date().timeIntervalSince(start) < 30)

            // Never binary to a terminal.
            let terminal = try shell(
                "script -qec \(shellQuoted("\(snapCommand(repo: repo)) export \(id) -o -")) /dev/null")
            #expect(terminal.status == 2, "\(terminal.stdout)")
            #expect(terminal.stdout.contains("terminal"))
        }

        /// A tarball made exactly as a backup.sh makes it: `pg_dump -Fc` (compressed, the default)
        /// and `tar -czf` (GNU format: whole-second mtimes, ././@LongLink names).
        enum Layout: String, CaseIterable, CustomTestStringConvertible {
            case atTheTop, underOneTopFolder, dotSlash
            var testDescription: String { rawValue }
        }

        @Test(arguments: Layout.allCases) func importOfAPlainBackupRestoresItsSources(layout: Layout) throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let database = try makeShopDatabase(cluster)
            let expectedDump = try cluster.pgDumpPlain(database: database)
            let work = folder.file("work")
            let (stamp, day): (String, String) =
                switch layout {
                case .atTheTop: ("20260101_120000", "01")
                case .underOneTopFolder: ("20260102_120000", "02")
                case .dotSlash: ("20260103_120000", "03")
                }
            let content = layout == .underOneTopFolder ? work + "/backup_\(stamp)" : work
            try makeStorageTree(at: content + "/storage", wholeSeconds: true, bigFileSize: 1 << 20)
            let source = try readTree(content + "/storage")
            let pgDump = try cluster.runClient("pg_dump", ["-Fc", "-f", content + "/database.dump", "-d", database])
            #expect(pgDump.succeeded, "\(pgDump.stderr)")
            let archive = folder.file("backup_\(stamp).tar.gz")
            let command =
                switch layout {
                case .atTheTop: "tar -czf \(shellQuoted(archive)) database.dump storage"
                case .underOneTopFolder: "tar -czf \(shellQuoted(archive)) backup_\(stamp)/"
                case .dotSlash: "tar -czf \(shellQuoted(archive)) -C \(shellQuoted(work)) ."
                }
            let tar = try shell(command, in: work)
            #expect(tar.status == 0 && tar.stderr.isEmpty, "\(tar.stderr)")

            try snap("--repo", repo, "init")
            let imported = try snap("--repo", repo, "import", archive)
            #expect(imported.status == 0, "\(imported.stderr)")
            #expect(imported.stderr.contains("compressed"), "the note on pg_dump's compression: \(imported.stderr)")
            let list = try parseJSON(try snap("--repo", repo, "list", "--json").stdout) as? [[String: Any]] ?? []
            #expect(list.count == 1)
            #expect(list.first?["time"] as? String == "2026-01-\(day)T12:00:00Z")
            #expect(list.first?["tags"] as? [String] == ["imported"])

            let target = cluster.uniqueDatabaseName("imported")
            try cluster.createDatabase(target)
            let restored = folder.file("restored")
            let restore = try snap(
                "--repo", repo, "restore", list.first?["id"] as? String ?? "?", "--db",
                cluster.conninfo(database: target), "--storage-to", restored)
            #expect(restore.status == 0, "\(restore.stderr)")
            #expect(try cluster.pgDumpPlain(database: target) == expectedDump)
            let diff = differences(source, try readTree(restored))
            #expect(diff.isEmpty, "\(diff.prefix(20).joined(separator: "\n"))")
        }

        @Test func exportThenImportAddsNothingAndRestoresTheOriginal() throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let (id, dumpAtSnapshot) = try snapshotShop(folder: folder, bigFileSize: 3 << 20)
            let source = try readTree(folder.file("storage"))
            let export = try snap("--repo", repo, "export", id, "-o", folder.path)
            #expect(export.status == 0, "\(export.stderr)")
            let archive = export.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let objectsBefore = try objectCount(repo)

            let imported = try snap("--repo", repo, "import", archive, "--json")
            #expect(imported.status == 0, "\(imported.stderr)")
            let made = try parseJSON(imported.stdout) as? [[String: Any]] ?? []
            #expect(made.count == 1)
            let totals = made.first?["totals"] as? [String: Any]
            #expect(totals?["new_objects"] as? Int == 0, "\(imported.stdout)")
            #expect(totals?["new_bytes"] as? Int == 0)
            #expect(try objectCount(repo) == objectsBefore)
            let original = try parseJSON(try snap("--repo", repo, "show", id, "--json").stdout) as? [String: Any]
            #expect(made.first?["time"] as? String == original?["time"] as? String)
            #expect(made.first?["tags"] as? [String] == ["imported"])
            #expect(!imported.stderr.contains("compressed"), "snap's own dump is not compressed: \(imported.stderr)")

            let target = cluster.uniqueDatabaseName("roundtrip")
            try cluster.createDatabase(target)
            let restored = folder.file("restored")
            let restore = try snap(
                "--repo", repo, "restore", made.first?["id"] as? String ?? "?", "--db",
                cluster.conninfo(database: target), "--storage-to", restored)
            #expect(restore.status == 0, "\(restore.stderr)")
            #expect(try cluster.pgDumpPlain(database: target) == dumpAtSnapshot)
            let diff = differences(source, try readTree(restored))
            #expect(diff.isEmpty, "\(diff.prefix(20).joined(separator: "\n"))")
        }
    }
}

// MARK: - Files only

extension ArchiveTests {
    @Suite struct FilesOnly {
        /// The archive names root as every owner, so a setuid or setgid bit would make `tar -x`
        /// as root create root programs: files are exported without them, folders keep theirs.
        @Test func exportDropsSetIDBitsOfFiles() throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let storage = folder.file("storage")
            try FileManager.default.createDirectory(atPath: storage + "/group", withIntermediateDirectories: true)
            try writeFile(storage + "/group/tool", Array("#!/bin/sh\n".utf8), mode: 0o6755)
            #expect(chmod(storage + "/group", 0o2770) == 0)
            try snap("--repo", repo, "init")
            #expect(try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).status == 0)
            let archive = folder.file("backup.tar.gz")
            #expect(try snap("--repo", repo, "export", "latest", "-o", archive).status == 0)
            let modes = try runProcess(
                "python3",
                [
                    "-c",
                    "import sys, tarfile; t = tarfile.open(sys.argv[1]); print(oct(t.getmember('storage/group/tool').mode), oct(t.getmember('storage/group').mode))",
                    archive,
                ])
            #expect(modes.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0o755 0o2770", "\(modes.stderr)")
        }

        @Test func filesOnlyExportHasOnlyStorageAndNeverOverwrites() throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let storage = folder.file("storage")
            try makeStorageTree(at: storage, bigFileSize: 100_000)
            let source = try readTree(storage)
            try snap("--repo", repo, "init")
            let id = try snap("--repo", repo, "snapshot", "--no-db", "--storage", storage).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let out = folder.file("out")
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let export = try snap("--repo", repo, "export", "latest", "-o", out)
            #expect(export.status == 0, "\(export.stderr)")
            let archive = export.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let names = try shell("tar -tzf \(shellQuoted(archive))").stdout.split(separator: "\n")
            #expect(names.count == source.count)
            #expect(names.first == "storage/")
            #expect(names.allSatisfy { $0.hasPrefix("storage/") }, "\(names.filter { !$0.hasPrefix("storage/") })")

            // An existing file is never overwritten: named as a file, or found in the folder.
            let existing = folder.file("existing.tar.gz")
            try writeFile(existing, Array("precious".utf8))
            let onFile = try snap("--repo", repo, "export", id, "-o", existing)
            #expect(onFile.status == 1)
            #expect(
                onFile.stderr.split(separator: "\n").count == 1 && onFile.stderr.contains(existing), "\(onFile.stderr)")
            #expect(try String(contentsOfFile: existing, encoding: .utf8) == "precious")
            let archiveHash = try fileHash(archive)
            let inFolder = try snap("--repo", repo, "export", String(id.prefix(8)), "-o", out)
            #expect(inFolder.status == 1)
            #expect(inFolder.stderr.split(separator: "\n").count == 1 && inFolder.stderr.contains(archive))
            #expect(try fileHash(archive) == archiveHash)
            #expect(folderListing(out).count == 1, "\(folderListing(out))")
            #expect(folderListing(folder.path) == ["existing.tar.gz", "out", "repo", "storage"])
        }

        @Test func importOfAFolderGoesInTimeOrderAndSkipsWhatItHasSeen() throws {
            let folder = try TemporaryDirectory()
            let repo = folder.file("repo")
            let backups = folder.file("backups")
            try FileManager.default.createDirectory(atPath: backups, withIntermediateDirectories: true)
            // Made in an order unlike their dates, and with file mtimes the other way round.
            let stamps = ["20260105_020000", "20260103_020000", "20260104_020000"]
            let mtimes: [String: String] = [
                "20260103_020000": "202601090000", "20260104_020000": "202601080000", "20260105_020000": "202601070000",
            ]
            for stamp in stamps {
                let work = folder.file("work-\(stamp)")
                try makeStorageTree(at: work + "/storage", wholeSeconds: true, bigFileSize: 200_000)
                try writeFile(work + "/storage/day.txt", Array(stamp.utf8))
                let archive = backups + "/backup_\(stamp).tar.gz"
                let tar = try shell(
                    "tar -czf \(shellQuoted(archive)) storage && touch -t \(mtimes[stamp]!) \(shellQuoted(archive))",
                    in: work)
                #expect(tar.status == 0, "\(tar.stderr)")
            }

            try snap("--repo", repo, "init")
            let first = try snap("--repo", repo, "import", backups, "--json")
            #expect(first.status == 0, "\(first.stderr)")
            let made = try parseJSON(first.stdout) as? [[String: Any]] ?? []
            let expectedTimes = ["2026-01-03T02:00:00Z", "2026-01-04T02:00:00Z", "2026-01-05T02:00:00Z"]
            #expect(made.compactMap { $0["time"] as? String } == expectedTimes)
            let list = try parseJSON(try snap("--repo", repo, "list", "--json").stdout) as? [[String: Any]] ?? []
            #expect(list.compactMap { $0["time"] as? String } == expectedTimes)
            #expect(list.map { $0["id"] as? String } == made.map { $0["id"] as? String })

            // Each snapshot holds its own archive's files.
            for (index, snapshot) in made.enumerated() {
                let restored = folder.file("restored-\(index)")
                let restore = try snap(
                    "--repo", repo, "restore", snapshot["id"] as? String ?? "?", "--no-db", "--storage-to", restored)
                #expect(restore.status == 0, "\(restore.stderr)")
                let day = try? String(contentsOfFile: restored + "/day.txt", encoding: .utf8)
                #expect(day == stamps.sorted()[index])
            }

            let objects = try objectCount(repo)
            let again = try snap("--repo", repo, "import", backups)
            #expect(again.status == 0, "\(again.stderr)")
            #expect(again.stdout.isEmpty)
            let skipped = again.stderr.split(separator: "\n")
            #expect(skipped.count == 3 && skipped.allSatisfy { $0.contains("skipped") }, "\(again.stderr)")
            #expect((try parseJSON(try snap("--repo", repo, "list", "--json").stdout) as? [Any])?.count == 3)
            #expect(try objectCount(repo) == objects)

            // All imports are one retention series, whatever their archives' names.
            let forget = try snap("--repo", repo, "forget", "--keep-last", "1", "--dry-run", "--json")
            let removed = ((try parseJSON(forget.stdout) as? [String: Any])?["decision"] as? [String: Any])?["removed"]
            #expect((removed as? [Any])?.count == 2, "\(forget.stdout)")

            // A damaged archive after a good one: the good one is imported and said to be, and
            // --json lists it.
            try makeStorageTree(at: folder.file("work-late") + "/storage", wholeSeconds: true, bigFileSize: 1000)
            let late = backups + "/backup_20260106_020000.tar.gz"
            #expect(try shell("tar -czf \(shellQuoted(late)) storage", in: folder.file("work-late")).status == 0)
            try writeFile(backups + "/backup_20260107_020000.tar.gz", Array("not gzip".utf8))
            let partial = try snap("--repo", repo, "import", backups, "--json")
            #expect(partial.status == 1)
            #expect(partial.stderr.contains("1 archive(s) before it were imported"), "\(partial.stderr)")
            let listed = try parseJSON(partial.stdout) as? [[String: Any]] ?? []
            #expect(listed.compactMap { $0["time"] as? String } == ["2026-01-06T02:00:00Z"])
        }
    }
}

// MARK: - Hostile archives

extension ArchiveTests {
    @Suite struct Hostile {
        /// The hostile cases of `hostileArchiveScript` and the entry the error must name.
        static let refused: [(String, String)] = [
            ("absolute", "/etc/evil"),
            ("dotdot", "storage/../evil"),
            ("file-below-symlink", "storage/link/file"),
            ("hardlink-absolute", "storage/h"),
            ("hardlink-outside", "storage/h"),
            ("hardlink-dotdot", "storage/h"),
            ("char-device", "storage/null"),
            ("block-device", "storage/disk"),
            ("fifo", "storage/fifo"),
            ("symlink-nul", "storage/link"),
            ("latin1-name", "storage/caf\\xE9"),
        ]

        /// storage/ itself as a symlink or a hard link.
        static let refusedToo: [(String, String)] = [
            ("storage-symlink", "storage"),
            ("storage-hardlink", "storage"),
        ]

        /// Makes the archive for `name` in a fresh folder and imports it into a fresh repository,
        /// with a marker folder as the working directory.
        private func importHostile(_ name: String, in folder: TemporaryDirectory) throws -> RunResult {
            let archive = try makeScriptedArchive(hostileArchiveScript, name, in: folder)
            try snap("--repo", folder.file("repo"), "init")
            try FileManager.default.createDirectory(atPath: folder.file("marker"), withIntermediateDirectories: true)
            return try shell(
                "\(snapCommand(repo: folder.file("repo"))) import \(shellQuoted(archive))", in: folder.file("marker"))
        }

        /// Imports the archive for `name`, which must go through, and restores it to `restored`.
        private func importHostileAndRestore(_ name: String, in folder: TemporaryDirectory, to restored: String) throws
            -> [String: TreeEntry]
        {
            let result = try importHostile(name, in: folder)
            #expect(result.status == 0, "\(result.stderr)")
            let restore = try snap(
                "--repo", folder.file("repo"), "restore", "latest", "--no-db", "--storage-to", restored)
            #expect(restore.status == 0, "\(restore.stderr)")
            return try readTree(restored)
        }

        private func expectRefused(_ name: String, naming entry: String) throws {
            #expect(!FileManager.default.fileExists(atPath: "/etc/evil"))
            let folder = try TemporaryDirectory()
            let result = try importHostile(name, in: folder)
            #expect(result.status == 1, "\(name): \(result.stdout) \(result.stderr)")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(name): \(result.stderr)")
            #expect(result.stderr.contains("'\(entry)'"), "\(name): \(result.stderr)")
            #expect(result.stdout.isEmpty)
            #expect(folderListing(folder.file("repo/snapshots")).isEmpty)
            #expect(folderListing(folder.file("marker")).isEmpty)
            #expect(
                folderListing(folder.path) == ["backup_20260101_000000.tar.gz", "make-archive.py", "marker", "repo"])
            #expect(folderListing(folder.file("repo")) == ["config", "lock", "objects", "snapshots"])
            #expect(!FileManager.default.fileExists(atPath: "/etc/evil"))
            #expect(try snap("--repo", folder.file("repo"), "check").status == 0)
        }

        @Test(arguments: refused) func hostileEntryStopsTheImport(name: String, entry: String) throws {
            try expectRefused(name, naming: entry)
        }

        @Test(arguments: refusedToo) func linkOrStorageRootThatLeadsElsewhereStopsTheImport(name: String, entry: String)
            throws
        {
            try expectRefused(name, naming: entry)
        }

        /// A symlink's target is data, as in a snapshot: kept as it is, whether absolute, climbing
        /// out of storage/ or through other links; the restore makes the link and never follows it.
        @Test(arguments: [
            ("symlink-absolute", ["link": "/etc"]), ("symlink-up", ["link": "../../x"]),
            ("symlink-chain", ["sub/deep/up": "../..", "escape": "sub/deep/up/.."]),
        ])
        func linkTargetsAreKeptAsTheyAre(name: String, links: [String: String]) throws {
            let folder = try TemporaryDirectory()
            let tree = try importHostileAndRestore(name, in: folder, to: folder.file("restored/storage"))
            for (path, target) in links {
                #expect(tree[path]?.kind == "symlink" && tree[path]?.target == target, "\(path): \(tree[path] as Any)")
            }
            #expect(folderListing(folder.file("marker")).isEmpty)
            #expect(folderListing(folder.file("restored")) == ["storage"])
            #expect(!FileManager.default.fileExists(atPath: "/etc/evil"))
        }

        @Test func harmlessLinksAreTakenIn() throws {
            let folder = try TemporaryDirectory()
            let tree = try importHostileAndRestore("benign", in: folder, to: folder.file("restored"))
            #expect(tree["copy"]?.kind == "file" && tree["copy"]?.content == tree["ok.txt"]?.content)
            #expect(tree["sub/up"]?.target == "../ok.txt" && tree["here"]?.target == ".")
            #expect(folderListing(folder.file("marker")).isEmpty)
        }
    }
}
