// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "snap",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "snap", targets: ["snap"]),
        .library(name: "SnapCore", targets: ["SnapCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
    ],
    targets: [
        // C libraries, one shim target each: a module map and a small header.
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),
        .systemLibrary(
            name: "CPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),

        // glibc calls that Swift's Glibc module does not show (syncfs).
        .systemLibrary(name: "CLinux"),

        // Chunker, hashing, compression, object store, manifests, snapshots, repository.
        .target(
            name: "SnapCore",
            dependencies: ["CCrypto", "CZstd", "CLinux"]
        ),
        // libpq sessions, server facts, pg_dump / pg_restore processes.
        .target(
            name: "SnapPostgres",
            dependencies: ["SnapCore", "CPQ", "CLinux"]
        ),
        // The classic tar.gz: POSIX tar with pax headers, parallel gzip, and the readers for import.
        .target(
            name: "SnapArchive",
            dependencies: ["SnapCore", "CZlib"]
        ),
        // The thin command-line front end: parses arguments, prints results.
        .executableTarget(
            name: "snap",
            dependencies: [
                "SnapCore",
                "SnapPostgres",
                "SnapArchive",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Shared by the test targets: a throwaway PostgreSQL cluster, temp folders, tree comparison.
        .target(
            name: "SnapTestSupport",
            dependencies: ["SnapCore"],
            path: "Tests/SnapTestSupport"
        ),
        .testTarget(
            name: "SnapCoreTests",
            dependencies: ["SnapCore", "SnapTestSupport"]
        ),
        .testTarget(
            name: "SnapPostgresTests",
            dependencies: ["SnapPostgres", "SnapCore", "SnapTestSupport"]
        ),
        .testTarget(
            name: "SnapArchiveTests",
            dependencies: ["SnapArchive", "SnapCore", "SnapTestSupport"]
        ),
        // End-to-end: runs the built `snap` binary.
        .testTarget(
            name: "SnapCLITests",
            dependencies: ["snap", "SnapCore", "SnapTestSupport"]
        ),
    ]
)
