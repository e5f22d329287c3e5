import ArgumentParser

/// Benchmarks, kept out of the test suite: each prints its figures as ratios measured side by
/// side in one run (these machines are noisy). `swift run -c release mitosis-bench NAME`.
@main
struct BenchmarkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mitosis-bench",
        abstract: "Measure Mitosis beside the tools people compare it with.",
        subcommands: [
            FreezeBenchmark.self,
            InspectBenchmark.self,
            ImageBenchmark.self,
            StacksBenchmark.self,
            GraphBenchmark.self,
            CheckpointBenchmark.self,
            RestoreBenchmark.self,
            NginxRestoreBenchmark.self,
            LiveRedisBenchmark.self,
            IssueTableBenchmark.self,
            ReplicateBenchmark.self,
            FailoverBenchmark.self,
            PromoteBenchmark.self,
            ManifestBenchmark.self,
        ]
    )
}
