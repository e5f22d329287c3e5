// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Mitosis",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Mitosis", targets: ["Mitosis"]),
        .library(name: "MitosisStacks", targets: ["MitosisStacks"]),
        .executable(name: "mitosis", targets: ["mitosis"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // The only C the library needs: variadic calls (ptrace, syscall), function-like macros,
        // kernel ABI that Debian 12's 6.1 headers lack, and struct layouts Swift must not guess.
        // libzstd (libzstd-dev): the optional compression of page data, `dump --compress`.
        .target(name: "CMitosis", linkerSettings: [.linkedLibrary("zstd")]),
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
        // Layer 0 — plain values (process, thread, mapping, descriptor, socket, graph), the pure
        // /proc parsers that build them, and the error family. No system calls.
        .target(
            name: "MitosisModel",
            dependencies: [.product(name: "SystemPackage", package: "swift-system")]
        ),
        // Layer 1 — the only Swift that speaks to the kernel: typed wrappers over system calls,
        // ptrace, netlink and sock_diag, pagemap, userfaultfd, posix_spawn. Everything above calls
        // these, never libc; what they read comes back as model values.
        .target(
            name: "MitosisKernel",
            dependencies: ["CMitosis", "MitosisModel", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // Layer 2 — freezing a process as a scope (Tracer), syscall injection, thread state.
        .target(
            name: "MitosisTrace",
            dependencies: ["MitosisKernel", "MitosisModel", .product(name: "Logging", package: "swift-log")]
        ),
        // Layer 3 — what a process holds: /proc introspection, sock_diag, the resource graph.
        .target(name: "MitosisInspect", dependencies: ["MitosisKernel", "MitosisModel", "MitosisTrace"]),
        // Layer 3 — call stacks; the only target that links libunwind, libelf and libstdc++.
        .target(name: "MitosisStacks", dependencies: ["MitosisKernel", "MitosisModel", "MitosisTrace", "CMitosisStacks"]),
        // Layer 3 — the checkpoint image: format, writers (directory, stream), hostile-input reader.
        .target(name: "MitosisImage", dependencies: ["MitosisKernel", "MitosisModel"]),
        // Layer 4 — dirty-page tracking, checkpoint sessions, and the kernel feature probes.
        .target(
            name: "MitosisCheckpoint",
            dependencies: [
                "MitosisKernel", "MitosisModel", "MitosisTrace", "MitosisInspect", "MitosisImage",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 5 — restore: a husk process filled by injected system calls from an image chain.
        .target(name: "MitosisRestore", dependencies: ["MitosisKernel", "MitosisModel", "MitosisTrace", "MitosisImage", "CMitosis"]),
        // Layer 6 — hot standby: epochs streamed to a standby over TCP (swift-nio), committed
        // durably there, promoted by a cold restore (Docs/replication.md). Opt-in, outside the
        // umbrella: a client that does not replicate links no swift-nio.
        .target(
            name: "MitosisReplication",
            dependencies: [
                "MitosisKernel", "MitosisModel", "MitosisImage", "MitosisCheckpoint", "MitosisRestore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                // Records the status figures; the CLI picks the backend (Prometheus).
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // Failover on etcd: an etcd v3 client (JSON gateway over HTTP/1.1 on swift-nio), the
        // election and fencing state machine, the cluster daemon, which drives replication
        // (`HotReplica`). Opt-in like Stacks: a client that does not fail over links no swift-nio
        // (Docs/cluster.md).
        .target(
            name: "MitosisCluster",
            dependencies: [
                "MitosisKernel", "MitosisModel", "MitosisImage", "MitosisRestore", "MitosisReplication",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // Three "hosts" and a client as network namespaces on a bridge, a real 3-member etcd
        // cluster, cluster daemons with hot standby and a redis writer that records every
        // acknowledgement: shared by the cluster tests and `mitosis-bench failover`.
        .target(
            name: "MitosisClusterTestbed",
            dependencies: [
                "MitosisKernel", "MitosisCluster",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The public API in one import. Stacks stay out so that a client that only inspects or
        // checkpoints does not link libunwind: import MitosisStacks for call stacks.
        .target(
            name: "Mitosis",
            dependencies: ["MitosisModel", "MitosisTrace", "MitosisInspect", "MitosisImage", "MitosisCheckpoint", "MitosisRestore"]
        ),
        .executableTarget(
            name: "mitosis",
            dependencies: [
                "Mitosis",
                "MitosisStacks",
                "MitosisReplication",
                "MitosisCluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // `--metrics ADDR:PORT`: the Prometheus text format over a small HTTP/1.1 server.
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // The bundled demo target that `mitosis demo` starts and inspects.
        .executableTarget(name: "mitosis-demo-target", path: "Examples/DemoTarget"),
        // Keeps a chain of incremental checkpoints of a pid, through the public API only.
        .executableTarget(name: "mitosis-incremental-chain", dependencies: ["Mitosis"], path: "Examples/IncrementalChain"),
        // A client that only inspects: it must link without libunwind (Tests check with ldd).
        .executableTarget(name: "mitosis-inspect-example", dependencies: ["Mitosis"], path: "Examples/InspectOnly"),
        // Builds one known scenario per test (threads, fds, sockets, memory…) and reports it ready.
        .executableTarget(name: "mitosis-scenario", path: "Tests/Scenario"),
        // C++ and Swift targets with known call chains, for the stacks tests' demangling.
        .executableTarget(name: "mitosis-scenario-cpp", path: "Tests/ScenarioCpp"),
        .executableTarget(name: "mitosis-scenario-swift", path: "Tests/ScenarioSwift"),
        // Benchmarks stay out of the test suite: `swift run -c release mitosis-bench --help`.
        .executableTarget(
            name: "mitosis-bench",
            dependencies: ["Mitosis", "MitosisKernel", "MitosisStacks", "MitosisCluster", "MitosisClusterTestbed", "MitosisImage",
                           "MitosisReplication", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Benchmarks"
        ),
        // Mutational fuzzer of the image reader: `scripts/fuzz-images --seconds N` (Docs/reliability.md).
        .executableTarget(name: "mitosis-image-fuzz", dependencies: ["Mitosis", "MitosisModel"], path: "Tests/ImageFuzz"),
        // The test bundle's process-wide set-up (a SIGPIPE handler), done before any test runs.
        .target(name: "MitosisTestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "MitosisTests",
            dependencies: ["MitosisTestSupport", "Mitosis", "MitosisKernel", "MitosisRestore", "MitosisStacks", "MitosisCluster", "MitosisClusterTestbed", "MitosisReplication", "mitosis-scenario", "mitosis", "mitosis-demo-target", "mitosis-inspect-example", "mitosis-scenario-cpp", "mitosis-scenario-swift",
                           "mitosis-image-fuzz"],
            exclude: ["Image/Corpus", "Golden/descriptors.json", "Golden/synthetic.json"]
        ),
    ]
)
