/// `<repo>/config`: the format version and every parameter that decides how data is stored.
public struct RepositoryConfig: Codable, Sendable, Equatable {
    /// The newest repository format this build reads and writes.
    public static let currentVersion = 1

    public struct Compression: Codable, Sendable, Equatable {
        public var algorithm: String
        public var level: Int
    }

    public struct Chunking: Codable, Sendable, Equatable {
        public var algorithm: String
        public var gearSeed: String
        public var files: ChunkerParameters
        public var database: ChunkerParameters
        public var tree: ChunkerParameters

        enum CodingKeys: String, CodingKey {
            case algorithm
            case gearSeed = "gear_seed"
            case files, database, tree
        }
    }

    public var format: String
    public var version: Int
    public var id: String
    public var hash: String
    public var compression: Compression
    public var chunker: Chunking

    /// zstd level 2: on the benchmark's first snapshot (a 471 MB dump, 307 MB of files) 7% faster
    /// than level 3 for the same repository size; level 1 was 9% faster but 3% larger.
    public static let defaultCompressionLevel = 2

    public static func makeDefault(compressionLevel: Int = RepositoryConfig.defaultCompressionLevel) -> RepositoryConfig
    {
        RepositoryConfig(
            format: "snap-repository",
            version: currentVersion,
            id: Posix.randomHex(16),
            hash: "sha256",
            compression: Compression(algorithm: "zstd", level: compressionLevel),
            chunker: Chunking(
                algorithm: "snap-fastcdc-1",
                gearSeed: "0x736e6170",
                files: .files,
                database: .database,
                tree: .tree
            )
        )
    }

    func validate(path: String) throws {
        guard format == "snap-repository" else {
            throw SnapError(.notARepository, "\(path) is not a snap repository config (format \(format))")
        }
        guard version >= 1, version <= Self.currentVersion else {
            throw SnapError(
                .unsupportedFormat,
                "repository format version \(version) at \(path) is newer than this snap supports (\(Self.currentVersion)); upgrade snap"
            )
        }
        guard hash == "sha256", compression.algorithm == "zstd", chunker.algorithm == "snap-fastcdc-1",
            chunker.gearSeed == "0x736e6170",
            (1...22).contains(compression.level)
        else {
            throw SnapError(.unsupportedFormat, "repository at \(path) uses settings this snap does not know")
        }
        try chunker.files.validate()
        try chunker.database.validate()
        try chunker.tree.validate()
    }
}
