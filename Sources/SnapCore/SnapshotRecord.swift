import Foundation

/// A chunked byte stream: its length and its chunks in order.
public struct StreamReference: Codable, Sendable, Equatable {
    public var size: UInt64
    public var chunks: [ObjectID]

    public init(size: UInt64 = 0, chunks: [ObjectID] = []) {
        self.size = size
        self.chunks = chunks
    }
}

/// `<repo>/snapshots/<id>.json`: the small record that commits a snapshot.
///
/// The id is the SHA-256 of the record file's bytes. Everything a snapshot holds is reached from
/// `manifest`: the database dump stream and the storage file tree.
public struct SnapshotRecord: Codable, Sendable, Equatable {
    public static let currentVersion = 1

    public struct Sources: Codable, Sendable, Equatable {
        /// The absolute path of the storage folder, when one was read.
        public var storage: String?
        /// Facts about the dumped database, when there was one.
        public var database: DatabaseFacts?
        /// The classic tar.gz this snapshot was imported from, when it was.
        public var imported: ImportOrigin?
        /// The snapshot whose dump this one reuses because the database provably had not changed.
        public var databaseReusedFrom: String?

        enum CodingKeys: String, CodingKey {
            case storage, database, imported
            case databaseReusedFrom = "database_reused_from"
        }

        public init(
            storage: String? = nil, database: DatabaseFacts? = nil, imported: ImportOrigin? = nil,
            databaseReusedFrom: String? = nil
        ) {
            self.storage = storage
            self.database = database
            self.imported = imported
            self.databaseReusedFrom = databaseReusedFrom
        }
    }

    /// Where an imported snapshot came from: `snap import` skips an archive it has taken in before.
    public struct ImportOrigin: Codable, Sendable, Equatable {
        /// The archive's file name, without its folder.
        public var file: String
        public var size: UInt64
        /// SHA-256 of the archive file's bytes.
        public var sha256: String
        /// Whether its database.dump was compressed by pg_dump (such dumps deduplicate poorly).
        public var compressedDump: Bool

        public init(file: String, size: UInt64, sha256: String, compressedDump: Bool) {
            self.file = file
            self.size = size
            self.sha256 = sha256
            self.compressedDump = compressedDump
        }

        enum CodingKeys: String, CodingKey {
            case file, size, sha256
            case compressedDump = "compressed_dump"
        }
    }

    public struct Totals: Codable, Sendable, Equatable {
        public var files: Int = 0
        public var directories: Int = 0
        public var symlinks: Int = 0
        /// Bytes of file content in the storage tree.
        public var fileBytes: UInt64 = 0
        /// Bytes of the database dump stream.
        public var databaseBytes: UInt64 = 0
        /// Objects this snapshot added to the repository.
        public var newObjects: Int = 0
        /// Uncompressed bytes of the objects this snapshot added.
        public var newBytes: UInt64 = 0
        /// Compressed bytes this snapshot added to the repository.
        public var storedBytes: UInt64 = 0
        /// Files found unchanged since the last snapshot (files cache) and so not read again.
        public var filesUnchanged: Int? = nil

        public init() {}

        enum CodingKeys: String, CodingKey {
            case files, directories, symlinks
            case fileBytes = "file_bytes"
            case databaseBytes = "database_bytes"
            case newObjects = "new_objects"
            case newBytes = "new_bytes"
            case storedBytes = "stored_bytes"
            case filesUnchanged = "files_unchanged"
        }
    }

    public var version: Int
    public var time: Timestamp
    public var host: String
    public var tags: [String]
    public var program: String
    public var sources: Sources
    public var manifest: StreamReference
    public var totals: Totals
    /// What could not be read; a snapshot with errors is still restorable for everything else.
    public var errors: [String]

    public init(
        time: Timestamp, host: String, tags: [String], program: String, sources: Sources,
        manifest: StreamReference, totals: Totals, errors: [String]
    ) {
        self.version = Self.currentVersion
        self.time = time
        self.host = host
        self.tags = tags
        self.program = program
        self.sources = sources
        self.manifest = manifest
        self.totals = totals
        self.errors = errors
    }

    /// The exact bytes written to disk: sorted keys, so the same record always has the same id.
    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return Array(try encoder.encode(self)) + [0x0A]
    }

    public static func decode(_ bytes: [UInt8]) throws -> SnapshotRecord {
        try JSONDecoder().decode(SnapshotRecord.self, from: Data(bytes))
    }
}

/// Facts about the database a dump came from, read in the dump's own transaction.
public struct DatabaseFacts: Codable, Sendable, Equatable {
    public var name: String
    public var host: String?
    public var port: String?
    public var user: String?
    public var serverVersion: String
    public var serverVersionNumber: Int
    public var encoding: String
    public var sizeBytes: Int64
    public var inRecovery: Bool
    public var walPosition: String
    public var systemIdentifier: String
    public var pgDumpVersion: String
    /// Unlogged tables in the database: their changes write no WAL, so a dump is never reused.
    public var unloggedTables: Int?
    /// MD5 of every sequence's state: `nextval` can move a sequence without writing WAL.
    public var sequencesDigest: String?
    /// The dump's transaction snapshot as PostgreSQL describes it, `xmin:xmax:xip,...`
    /// (`pg_current_snapshot()`): which transactions had completed when it was taken. Two dumps
    /// with the same description (and WAL position) see the same committed transactions: any
    /// transaction that completes in between either leaves the in-progress list or moves `xmax`.
    /// nil in records of snap versions that did not record it: never reused.
    public var transactionSnapshot: String?
    /// How the dump's data is spread over its tables, learned as it streamed; decides whether a
    /// restore runs pg_restore in parallel by default.
    public var tableData: TableData?

    /// The data blocks of a custom-format dump (one per dumped table, and one per batch of large
    /// objects), with their framing.
    public struct TableData: Codable, Sendable, Equatable {
        /// Entries with a data block.
        public var entries: Int
        /// Bytes of the largest block.
        public var largestBytes: Int64
        /// Bytes of all blocks.
        public var totalBytes: Int64

        public init(entries: Int, largestBytes: Int64, totalBytes: Int64) {
            self.entries = entries
            self.largestBytes = largestBytes
            self.totalBytes = totalBytes
        }

        /// Whether parallel restore jobs can share the work: two blocks or more and none holding
        /// more than three quarters of the data. A dump that is mostly one table restores as fast
        /// with one job, and the temporary copy a parallel restore needs costs time (8% on a
        /// 200 MB pgbench dump, 40% on a 1.4 GB one, where its writes compete with the server's).
        public var worthParallelRestore: Bool {
            entries >= 2 && totalBytes > 0 && largestBytes * 4 <= totalBytes * 3
        }

        enum CodingKeys: String, CodingKey {
            case entries
            case largestBytes = "largest_bytes"
            case totalBytes = "total_bytes"
        }
    }

    /// Whether a new dump with these facts would hold exactly what the earlier dump of `earlier`
    /// holds, so that dump can be reused: the same cluster (system identifier), database, WAL
    /// position, transaction snapshot, sequence states and pg_dump version, and no unlogged
    /// tables (their changes write no WAL). Anything unknown means no. docs/FORMAT.md §6.2 argues
    /// why this is enough.
    public func provesSameState(as earlier: DatabaseFacts) -> Bool {
        guard !systemIdentifier.isEmpty, !walPosition.isEmpty, unloggedTables == 0, let sequencesDigest,
            let transactionSnapshot
        else { return false }
        return earlier.systemIdentifier == systemIdentifier && earlier.name == name
            && earlier.walPosition == walPosition && earlier.transactionSnapshot == transactionSnapshot
            && earlier.sequencesDigest == sequencesDigest && earlier.unloggedTables == 0
            && earlier.pgDumpVersion == pgDumpVersion
    }

    public init(
        name: String, host: String?, port: String?, user: String?, serverVersion: String,
        serverVersionNumber: Int, encoding: String, sizeBytes: Int64, inRecovery: Bool,
        walPosition: String, systemIdentifier: String, pgDumpVersion: String
    ) {
        self.name = name
        self.host = host
        self.port = port
        self.user = user
        self.serverVersion = serverVersion
        self.serverVersionNumber = serverVersionNumber
        self.encoding = encoding
        self.sizeBytes = sizeBytes
        self.inRecovery = inRecovery
        self.walPosition = walPosition
        self.systemIdentifier = systemIdentifier
        self.pgDumpVersion = pgDumpVersion
    }

    enum CodingKeys: String, CodingKey {
        case name, host, port, user, encoding
        case serverVersion = "server_version"
        case serverVersionNumber = "server_version_num"
        case sizeBytes = "size_bytes"
        case inRecovery = "in_recovery"
        case walPosition = "wal_position"
        case systemIdentifier = "system_identifier"
        case pgDumpVersion = "pg_dump_version"
        case unloggedTables = "unlogged_tables"
        case sequencesDigest = "sequences_digest"
        case transactionSnapshot = "transaction_snapshot"
        case tableData = "table_data"
    }
}

/// A committed snapshot: its id and record.
public struct Snapshot: Sendable {
    public var id: String
    public var record: SnapshotRecord
    public var shortID: String { String(id.prefix(8)) }
}
