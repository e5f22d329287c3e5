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

    @Option(help: "The pid of a running target (e.g. `mitosis-scenario graphload 10000`).") var pid: Int32
    @Option(help: "Repetitions (the median is reported).") var runs: Int = 7

    func run() async throws {
        let clock = ContinuousClock()
        func time<T>(_ body: () throws -> T) rethrows -> (T, Duration) {
            let start = clock.now
            let result = try body()
            return (result, clock.now - start)
        }
        var samples: [String: [Duration]] = [:]
        var graphSize = (nodes: 0, edges: 0), lsofLines = 0, ssLines = 0
        for _ in 0..<runs {
            let (graph, graphTime) = try time { try GraphBuilder.graph(of: pid) }
            let (json, jsonTime) = try time { try JSONOutput.encoder(pretty: false).encode(graph) }
            _ = json
            graphSize = (graph.nodes.count, graph.edges.count)
            let (lsof, lsofTime) = try time { try Self.lines(of: "/usr/bin/lsof", ["-p", String(pid)]) }
            let (ss, ssTime) = try time { try Self.lines(of: "/usr/bin/ss", ["-anpe"]) }
            (lsofLines, ssLines) = (lsof, ss)
            // The parts, each on its own.
            let (_, descriptorsTime) = try time { try ProcessReader.descriptors(TargetProcess(pid: pid)) }
            let (_, socketsTime) = try time { try SockDiag(networkNamespaceOf: pid).table() }
            let (_, processTime) = try time {
                let target = try TargetProcess(pid: pid)
                return (try ProcessReader.identity(target), try ProcessReader.threads(target),
                        try ProcessReader.namespaces(target), try ProcessReader.mappings(target, detailed: false),
                        ProcessReader.mounts(target))
            }
            for (key, value) in [("build", graphTime), ("graph", graphTime + jsonTime), ("json", jsonTime), ("lsof", lsofTime), ("ss", ssTime),
                                 ("descriptors", descriptorsTime), ("sockets", socketsTime), ("process", processTime)] {
                samples[key, default: []].append(value)
            }
        }
        func median(_ key: String) -> Double {
            let sorted = samples[key]!.sorted()
            let d = sorted[sorted.count / 2].components
            return Double(d.seconds) * 1000 + Double(d.attoseconds) / 1e15
        }
        let graph = median("graph"), build = median("build"), lsof = median("lsof"), ss = median("ss")
        let fds = (try? ProcessReader.descriptors(TargetProcess(pid: pid)).count) ?? 0
        print(String(format: "target: %d descriptors; medians over %d runs", fds, runs))
        print(String(format: "graph (build + JSON): %.1f ms  -> %d nodes, %d edges", graph, graphSize.nodes, graphSize.edges))
        print(String(format: "lsof -p:             %.1f ms  -> %d lines", lsof, lsofLines))
        print(String(format: "ss -anpe:            %.1f ms  -> %d lines", ss, ssLines))
        print(String(format: "ratio (build + JSON) / (lsof + ss) = %.2f; build alone (the in-memory graph) / (lsof + ss) = %.2f",
                     graph / (lsof + ss), build / (lsof + ss)))
        let parts = ["descriptors", "sockets", "process", "json"].map { ($0, median($0)) }
        let assembly = graph - parts.map(\.1).reduce(0, +)
        print("where the graph's time goes (each part timed alone):")
        for (name, value) in parts + [("assembly (kcmp grouping, peers, nodes/edges)", assembly)] {
            print(String(format: "  %-46@ %6.1f ms  %4.0f%%", name as NSString, value, 100 * value / graph))
        }
    }

    /// Runs a tool with its output captured, returning its line count.
    static func lines(of tool: String, _ arguments: [String]) throws -> Int {
        let data = try ToolOutput.capture(tool, arguments)
        return data.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
    }
}
