// swift-tools-version:6.1
// Throughput benchmarks for SnapCore (package-benchmark). Run from this folder:
//   swift package --disable-sandbox benchmark
// See ../docs/BENCHMARKS.md for the commands and the last results.
import PackageDescription

let package = Package(
    name: "snap-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        // The malloc interposer trait is required: the benchmark package's default traits pull in
        // a runtime interposer package that is not available here.
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        // The root package. `name:` keeps `package: "snap"` working whatever the checkout folder is called.
        .package(name: "snap", path: ".."),
    ],
    targets: [
        // Test data and the MB/s metric, shared by the benchmark executables.
        .target(name: "BenchmarkSupport", path: "Support/BenchmarkSupport")
    ]
)

// One executable per area, in Benchmarks/<Name>/<Name>.swift, each exposing `let benchmarks`.
for name in ["ChunkerBenchmarks", "HashBenchmarks", "CompressionBenchmarks", "StoreBenchmarks"] {
    package.targets.append(
        .executableTarget(
            name: name,
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "SnapCore", package: "snap"),
                "BenchmarkSupport",
            ],
            path: "Benchmarks/\(name)",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    )
}
