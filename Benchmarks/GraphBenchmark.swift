import ArgumentParser
import Foundation
import Mitosis
import MitosisKernel

/// The resource graph of a process with many descriptors, beside `lsof -p PID` plus `ss -anpe`
/// measured in the same run, with where the graph's time goes.
struct GraphBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "Build the graph of a process with many descriptors, beside lsof -p + ss -anpe.")

    @Option(help: "The pid of a running target; by default a `mitosis-scenario manyfds N` is started.") var pid: Int32?
    @Option(help: "Descriptors the started target opens.") var descriptors: Int = 10_000
    @Option(help: "The scenario started: manyfds (files, pipes, eventfds, socketpairs, /dev/null) or graphload (adds TCP).")
    var scenario: String = "manyfds"
    @Option(help: "Repetitions (the median is reported).") var runs: Int = 7
    @Flag(help: "Also count the instructions of `mitosis graph --format json`, lsof and ss under valgrind's callgrind (slow).") var callgrind = false

    func run() async throws {
        let target = try pid.map { InspectBenchmark.Target(pid: $0) } ?? InspectBenchmark.Target(descriptors: descriptors, scenario: scenario)
        defer { target.stop() }
        let pid = target.pid
        let clock = ContinuousClock()
        func time<T>(_ body: () throws -> T) rethrows -> (T, Duration) {
            let start = clock.now
            let result = try body()
            return (result, clock.now - start)
        }
        let mitosis = siblingExecutable("mitosis")
        let graphArguments = ["graph", String(pid), "--format", "json"]
        let lsofArguments = ["-n", "-P", "-p", String(pid)], ssArguments = ["-anpe"]
        var samples = Samples()
        var graphSize = (nodes: 0, edges: 0)
        for _ in 0..<runs {
            // Interleaved, so that machine noise hits every contender alike.
            samples.add("mitosis graph --format json (CLI)", try TimedRun.run(mitosis, graphArguments))
            samples.add("lsof -n -P -p PID", try TimedRun.run("/usr/bin/lsof", lsofArguments))
            samples.add("ss -anpe", try TimedRun.run("/usr/bin/ss", ssArguments))
            // The parts, each on its own, in this process.
            let (graph, graphTime) = try time { try GraphBuilder.graph(of: pid) }
            graphSize = (graph.nodes.count, graph.edges.count)
            samples.add("build", wall: graphTime)
            samples.add("json", wall: try time { try JSONOutput.bytes(graph) }.1)
            samples.add("json (Foundation JSONEncoder, before)", wall: try time { try JSONOutput.encoder().encode(graph) }.1)
            samples.add("descriptors", wall: try time { try ProcessReader.descriptors(TargetProcess(pid: pid)) }.1)
            samples.add("sockets", wall: try time { try SockDiag(networkNamespaceOf: pid).table() }.1)
            samples.add("process", wall: try time {
                let target = try TargetProcess(pid: pid)
                return (try ProcessReader.identity(target), try ProcessReader.threads(target),
                        try ProcessReader.namespaces(target), try ProcessReader.mappings(target, detailed: false),
                        ProcessReader.mounts(target))
            }.1)
        }
        let fds = (try? ProcessReader.descriptors(TargetProcess(pid: pid)).count) ?? 0
        print(String(format: "target %d: %d descriptors, graph of %d nodes, %d edges; medians over %d runs", pid, fds, graphSize.nodes, graphSize.edges, runs))
        for name in ["mitosis graph --format json (CLI)", "lsof -n -P -p PID", "ss -anpe"] { print(samples.line(name)) }
        let ours = samples.median("mitosis graph --format json (CLI)"), peers = samples.median("lsof -n -P -p PID") + samples.median("ss -anpe")
        let oursCPU = samples.median("mitosis graph --format json (CLI)", cpu: true)
        let peersCPU = samples.median("lsof -n -P -p PID", cpu: true) + samples.median("ss -anpe", cpu: true)
        print(String(format: "(lsof + ss) / mitosis graph --format json: %.2fx wall, %.2fx cpu (goal: 2x)", peers / ours, peersCPU / oursCPU))
        let build = samples.median("build"), json = samples.median("json")
        print(String(format: "in process: build %.1f ms + JSON %.1f ms (Foundation's JSONEncoder: %.1f ms)", build, json,
                     samples.median("json (Foundation JSONEncoder, before)")))
        let parts = ["descriptors", "sockets", "process"].map { ($0, samples.median($0)) }
        let assembly = build - parts.map(\.1).reduce(0, +)
        print("where the in-process time goes (each part timed alone):")
        for (name, value) in parts + [("assembly (kcmp grouping, peers, nodes/edges)", assembly), ("json", json)] {
            print(String(format: "  %-46@ %6.1f ms  %4.0f%%", name as NSString, value, 100 * value / (build + json)))
        }
        if callgrind {
            let counts = try [("mitosis graph --format json", mitosis, graphArguments), ("lsof", "/usr/bin/lsof", lsofArguments),
                              ("ss", "/usr/bin/ss", ssArguments)].map { ($0.0, try TimedRun.instructions($0.1, $0.2)) }
            print("callgrind instructions: " + counts.map { "\($0.0) \($0.1.map(String.init) ?? "n/a")" }.joined(separator: ", "))
        }
    }
}
