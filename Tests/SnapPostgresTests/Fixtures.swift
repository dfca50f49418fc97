import Foundation
import SnapCore
import SnapPostgres
import SnapTestSupport
import Testing

/// Skips the suites where PostgreSQL is not installed, except under CI, where they run and fail.
let needsServer = Testing.ConditionTrait.enabled(
    if: TestCluster.isAvailable, Comment(rawValue: TestCluster.unavailableReason))

/// A database with a bit of everything pg_dump handles: tables with keys and a foreign key, a
/// serial sequence, bytea, a view, a function, an enum, an index, a comment and a large object.
/// 2 tables, 620 rows.
func makeSourceDatabase(_ cluster: TestCluster, prefix: String = "src", rows: Int = 500) throws -> String {
    let name = cluster.uniqueDatabaseName(prefix)
    try cluster.createDatabase(name)
    try cluster.psql(
        """
        CREATE TYPE mood AS ENUM ('ok', 'great');
        CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, payload bytea, feeling mood DEFAULT 'ok',
                            created timestamptz DEFAULT '2020-01-01 00:00:00+00');
        INSERT INTO items (name, payload) SELECT 'item ' || g, decode(md5(g::text), 'hex') FROM generate_series(1, \(rows)) g;
        CREATE TABLE notes (id int PRIMARY KEY, item_id int REFERENCES items, body text);
        INSERT INTO notes SELECT g, g, repeat('note ', g % 7) FROM generate_series(1, 120) g;
        CREATE INDEX notes_item ON notes (item_id);
        CREATE VIEW item_names AS SELECT name FROM items;
        CREATE FUNCTION add_one(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
        COMMENT ON TABLE items IS 'things';
        SELECT lo_from_bytea(0, 'large object bytes');
        """, database: name)
    return name
}

/// Dumps `database` whole through a `DumpSession` and finishes it; the session has the facts.
func dumpWhole(_ cluster: TestCluster, _ database: String) throws -> (bytes: [UInt8], session: DumpSession) {
    let session = try DumpSession(conninfo: cluster.conninfo(database: database))
    let bytes = try readAll(session)
    try session.finish()
    return (bytes, session)
}

/// Reads a dump to its end.
func readAll(_ dump: DatabaseDump, bufferSize: Int = 7000) throws -> [UInt8] {
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: bufferSize)
    while true {
        let count = try buffer.withUnsafeMutableBytes { try dump.read(into: $0) }
        if count == 0 { return result }
        result.append(contentsOf: buffer[0..<count])
    }
}

/// A reader over bytes in memory, in the shape `DumpRestore.restore(reading:)` takes.
final class ByteReader {
    private let bytes: [UInt8]
    private var offset = 0
    /// Throws this error once `failAfter` bytes have been read.
    var failAfter: Int?

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func read(_ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if let failAfter, offset >= failAfter { throw TestSupportError("simulated repository read failure") }
        let count = min(buffer.count, bytes.count - offset, failAfter.map { $0 - offset } ?? Int.max)
        bytes.withUnsafeBytes { source in
            buffer.baseAddress!.copyMemory(from: source.baseAddress! + offset, byteCount: count)
        }
        offset += count
        return count
    }
}

/// The environment with one test hook or override added: passed through the options instead of
/// setenv, so tests running in parallel do not see each other's hooks.
func environment(adding extra: [String: String]) -> [String: String] {
    ProcessInfo.processInfo.environment.merging(extra) { _, new in new }
}

/// Writes an executable shell script and returns its path.
@discardableResult
func script(_ folder: TemporaryDirectory, _ name: String, _ body: String) throws -> String {
    try folder.write(name, "#!/bin/sh\n" + body + "\n", mode: 0o755)
}
