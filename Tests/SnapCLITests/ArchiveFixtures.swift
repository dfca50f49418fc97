import Foundation
import SnapTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// Fixtures for the export and import tests: a small database, a storage tree with every kind of
// entry a classic backup carries, shell helpers, and a Python script that makes hostile archives.

/// `text` quoted for a POSIX shell.
func shellQuoted(_ text: String) -> String {
    "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// Runs a bash script (in `folder` when given), capturing both outputs.
@discardableResult
func shell(_ script: String, in folder: String? = nil) throws -> RunResult {
    let full = folder.map { "cd \(shellQuoted($0)) && " + script } ?? script
    return try run("/bin/bash", ["-c", full])
}

/// The snap binary with `--repo repo`, quoted for a shell command line.
func snapCommand(repo: String) -> String {
    "\(shellQuoted(snapBinary)) --repo \(shellQuoted(repo))"
}

/// The "id" of `snap snapshot --json` output.
func snapshotID(_ json: String) throws -> String {
    ((try parseJSON(json) as? [String: Any])?["id"] as? String) ?? ""
}

/// `backup_YYYYMMDD_HHMMSS.tar.gz` for a JSON time such as `2026-01-11T12:00:00Z`.
func backupName(forTime time: String) -> String {
    let digits = time.filter(\.isNumber)
    return "backup_\(digits.prefix(8))_\(digits.dropFirst(8).prefix(6)).tar.gz"
}

/// Runs the Python `script` (saved in `folder`) to write its archive `name` as
/// `backup_20260101_000000.tar.gz` in `folder`; returns the archive's path.
func makeScriptedArchive(_ script: String, _ name: String, in folder: TemporaryDirectory) throws -> String {
    let scriptPath = folder.file("make-archive.py")
    try writeFile(scriptPath, Array(script.utf8))
    let archive = folder.file("backup_20260101_000000.tar.gz")
    let made = try run("/usr/bin/env", ["python3", scriptPath, name, archive])
    #expect(made.status == 0, "\(made.stderr)")
    return archive
}

/// SHA-256 of a file, as hex.
func fileHash(_ path: String) throws -> String {
    try shell("sha256sum \(shellQuoted(path)) | cut -d' ' -f1").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// The entries of a folder, sorted; empty when it is missing.
func folderListing(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

/// A small shop database with a few types: serial and bigserial keys, an enum, numeric, text,
/// timestamptz, timestamp, date, arrays, jsonb, bytea, boolean, uuid, a foreign key, an index
/// and a view.
func makeShopDatabase(_ cluster: TestCluster) throws -> String {
    let name = cluster.uniqueDatabaseName("shop")
    try cluster.createDatabase(name)
    try cluster.psql(
        #"""
        CREATE TYPE order_state AS ENUM ('new', 'paid', 'shipped');
        CREATE TABLE customers (
            id serial PRIMARY KEY,
            name text NOT NULL,
            email text UNIQUE,
            balance numeric(12, 2),
            joined timestamptz NOT NULL,
            birthday date,
            tags text[],
            profile jsonb,
            avatar bytea,
            active boolean,
            token uuid
        );
        INSERT INTO customers (name, email, balance, joined, birthday, tags, profile, avatar, active, token)
        SELECT 'Kundë ' || g, 'c' || g || '@example.org', g * 3.25, '2024-01-01 08:00+00'::timestamptz + g * interval '1 day',
               '1980-01-01'::date + g, ARRAY['t' || (g % 7), 'ß'], jsonb_build_object('n', g, 'vip', g % 10 = 0),
               decode(md5(g::text), 'hex'), g % 3 <> 0, md5('token' || g)::uuid
        FROM generate_series(1, 400) g;
        CREATE TABLE orders (
            id bigserial PRIMARY KEY,
            customer int NOT NULL REFERENCES customers,
            state order_state NOT NULL DEFAULT 'new',
            total numeric(14, 4),
            placed timestamp,
            note text
        );
        INSERT INTO orders (customer, state, total, placed, note)
        SELECT 1 + g % 400, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3]::order_state, g / 7.0,
               '2025-06-01 10:00'::timestamp + g * interval '17 minutes', E'note\twith tab\n' || g
        FROM generate_series(1, 2000) g;
        CREATE INDEX orders_customer ON orders (customer);
        CREATE VIEW paid_orders AS SELECT id, customer, total FROM orders WHERE state = 'paid';
        """#, database: name)
    return name
}

/// A storage tree with what a classic backup must carry: nested folders, an empty folder, files
/// with different modes, nanosecond mtimes (or whole seconds, for archives made by GNU tar's
/// default format, which keeps only seconds), relative symlinks that stay inside, non-ASCII names
/// and link targets, paths longer than 100 and 255 bytes, an empty file, a compressible text file
/// and a random file of `bigFileSize` bytes.
func makeStorageTree(at root: String, wholeSeconds: Bool = false, bigFileSize: Int = 5 << 20, seed: UInt64 = 1)
    throws
{
    let fm = FileManager.default
    func folder(_ path: String, _ mode: mode_t = 0o755) throws {
        try fm.createDirectory(atPath: root + "/" + path, withIntermediateDirectories: true)
        chmod(root + "/" + path, mode)
    }
    func file(_ path: String, _ bytes: [UInt8], _ mode: mode_t = 0o644) throws {
        try writeFile(root + "/" + path, bytes, mode: mode)
    }
    func link(_ path: String, _ target: String) throws {
        try fm.createSymbolicLink(atPath: root + "/" + path, withDestinationPath: target)
    }
    try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
    try folder("uploads/2024/03")
    try folder("uploads/2024/empty", 0o700)
    try folder("bin", 0o750)
    try file("uploads/2024/03/invoice-0001.pdf", pseudoRandomBytes(20_000, seed: seed))
    try file("uploads/2024/03/notes.txt", Array("paid in full\n".utf8), 0o640)
    try file("bin/run.sh", Array("#!/bin/sh\necho run\n".utf8), 0o755)
    try file("secret.key", Array("k3y".utf8), 0o600)
    try file("read-only.txt", Array("read only\n".utf8), 0o444)
    try file("empty.txt", [])
    try folder("ünïcødé")
    try file("ünïcødé/日本語 ファイル 🎉.txt", Array("utf-8 name\n".utf8))
    try file("ünïcødé/e\u{301}.txt", Array("nfd name\n".utf8))
    // 5 + 70 + 1 + 74 bytes: over 100, still a ustar prefix/name split; a 184-byte name (pax);
    // and a path of over 255 bytes (pax).
    try folder("long/" + String(repeating: "a", count: 70))
    try file("long/" + String(repeating: "a", count: 70) + "/" + String(repeating: "b", count: 70) + ".txt", [1, 2])
    try file("long/" + String(repeating: "n", count: 180) + ".txt", Array("long name".utf8))
    let deep = "long/" + Array(repeating: String(repeating: "d", count: 80), count: 3).joined(separator: "/")
    try folder(deep)
    try file(deep + "/deep.txt", Array("deep".utf8))
    var text = ""
    for line in 0..<20_000 { text += "line \(line): the quick brown fox jumps over the lazy dog\n" }
    try file("uploads/log.txt", Array(text.utf8))
    try file("uploads/big.bin", pseudoRandomBytes(bigFileSize, seed: seed + 100))
    try link("latest-invoice", "uploads/2024/03/invoice-0001.pdf")
    try link("uploads/2024/03/key", "../../../secret.key")
    try link("ünïcødé/link 🎉", "日本語 ファイル 🎉.txt")
    try link("uploads/here", ".")
    try stampTimes(root, wholeSeconds: wholeSeconds)
}

/// Gives every entry under `root` (root included) its own mtime; setting a child's time leaves
/// its folder's time alone, so the order does not matter.
func stampTimes(_ root: String, wholeSeconds: Bool) throws {
    let base: Int64 = 1_700_000_000_000_000_000
    for (index, path) in try readTree(root).keys.sorted().enumerated() {
        let offset = Int64(index) * 86_413_000_000_000 + (wholeSeconds ? 0 : Int64(index * 7_919 + 1) * 12_347)
        try setTime(path == "." ? root : root + "/" + path, base + offset)
    }
}

/// A Python script that writes one hostile (or, for `benign`, harmless) archive:
/// `python3 hostile.py CASE OUT.tar.gz`. Every archive starts with `storage/` and a file in it.
let hostileArchiveScript = #"""
    import io, sys, tarfile

    KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}

    CASES = {
        "absolute": [("/etc/evil", "file")],
        "dotdot": [("storage/../evil", "file")],
        "symlink-absolute": [("storage/link", "symlink", "/etc")],
        "symlink-up": [("storage/link", "symlink", "../../x")],
        "file-below-symlink": [("storage/sub", "dir"), ("storage/link", "symlink", "sub"),
                               ("storage/link/file", "file")],
        "hardlink-absolute": [("storage/h", "hardlink", "/etc/passwd")],
        "hardlink-outside": [("storage/h", "hardlink", "evil")],
        "hardlink-dotdot": [("storage/h", "hardlink", "storage/../../etc/passwd")],
        "char-device": [("storage/null", "chr", "", 1, 3)],
        "block-device": [("storage/disk", "blk", "", 8, 0)],
        "fifo": [("storage/fifo", "fifo")],
        # Links that leave storage/ only when other links in the archive are followed.
        "symlink-chain": [("storage/sub", "dir"), ("storage/sub/deep", "dir"),
                          ("storage/sub/deep/up", "symlink", "../.."),
                          ("storage/escape", "symlink", "sub/deep/up/..")],
        # storage/ itself as a symlink or a hard link, with an entry below it.
        "storage-symlink": [("storage", "symlink", "sub"), ("storage/x", "file")],
        "storage-hardlink": [("storage", "hardlink", "storage/ok.txt")],
        # A NUL in a pax linkpath: the kernel would cut "..\x00x" to "..", after the checks.
        "symlink-nul": [("storage/link", "symlink", "..\x00x")],
        # A Latin-1 name, not UTF-8 (written in a pax record, hdrcharset=BINARY).
        "latin1-name": [("storage/caf\udce9", "file")],
        # Harmless: a hard link to an earlier file, links that stay inside.
        "benign": [("storage/sub", "dir"), ("storage/copy", "hardlink", "storage/ok.txt"),
                   ("storage/sub/up", "symlink", "../ok.txt"), ("storage/here", "symlink", ".")],
    }

    def add(archive, name, kind, link="", major=0, minor=0):
        info = tarfile.TarInfo(name)
        if "\x00" in link:
            info.pax_headers = {"linkpath": link}
        info.type = KINDS[kind]
        info.mode = 0o755 if kind == "dir" else 0o644
        info.mtime = 1767225600
        info.linkname = link
        info.devmajor, info.devminor = major, minor
        data = b"evil\n" if kind == "file" else b""
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data) if data else None)

    case, path = sys.argv[1], sys.argv[2]
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        add(archive, "storage", "dir")
        info = tarfile.TarInfo("storage/ok.txt")
        info.size, info.mtime, info.mode = 3, 1767225600, 0o644
        archive.addfile(info, io.BytesIO(b"ok\n"))
        for entry in CASES[case]:
            add(archive, *entry)
    names = [member.name for member in tarfile.open(path)]
    assert names[2:] == [entry[0] for entry in CASES[case]], names
    """#
