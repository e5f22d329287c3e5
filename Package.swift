// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Mitosis",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Mitosis", targets: ["Mitosis"]),
        .executable(name: "mitosis", targets: ["mitosis"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // The only C the library needs: variadic calls (ptrace, syscall), function-like macros,
        // kernel ABI that Debian 12's 6.1 headers lack, and struct layouts Swift must not guess.
        .target(name: "CMitosis"),
        // libunwind-ptrace and libelf, isolated so that their link order is decided in one place.
        // libgcc_s is linked first so that it, not nongnu libunwind, provides `_Unwind_*`.
        .target(
            name: "CMitosisStacks",
            linkerSettings: [
                .linkedLibrary("gcc_s"),
                .linkedLibrary("unwind-ptrace"),
                .linkedLibrary("unwind-generic"),
                .linkedLibrary("unwind"),
                .linkedLibrary("lzma"),
                .linkedLibrary("elf"),
                .linkedLibrary("stdc++"),
            ]
        ),
        .target(
            name: "Mitosis",
            dependencies: [
                "CMitosis",
                "CMitosisStacks",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "mitosis",
            dependencies: [
                "Mitosis",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The bundled demo target that `mitosis demo` starts and inspects.
        .executableTarget(name: "mitosis-demo-target", path: "Examples/DemoTarget"),
        // Keeps a chain of incremental checkpoints of a pid, through the public API only.
        .executableTarget(name: "mitosis-incremental-chain", dependencies: ["Mitosis"], path: "Examples/IncrementalChain"),
        // Builds one known scenario per test (threads, fds, sockets, memory…) and reports it ready.
        .executableTarget(name: "mitosis-scenario", path: "Tests/Scenario"),
        // C++ and Swift targets with known call chains, for the stacks tests' demangling.
        .executableTarget(name: "mitosis-scenario-cpp", path: "Tests/ScenarioCpp"),
        .executableTarget(name: "mitosis-scenario-swift", path: "Tests/ScenarioSwift"),
        // Benchmarks stay out of the test suite: `swift run -c release mitosis-bench --help`.
        .executableTarget(
            name: "mitosis-bench",
            dependencies: ["Mitosis", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Benchmarks"
        ),
        // Mutational fuzzer of the image reader: `scripts/fuzz-images --seconds N` (Docs/reliability.md).
        .executableTarget(name: "mitosis-image-fuzz", dependencies: ["Mitosis"], path: "Tests/ImageFuzz"),
        .testTarget(
            name: "MitosisTests",
            dependencies: ["Mitosis", "mitosis-scenario", "mitosis", "mitosis-demo-target", "mitosis-scenario-cpp", "mitosis-scenario-swift",
                           "mitosis-image-fuzz"],
            exclude: ["Image/Corpus"]
        ),
    ]
)
