import ArgumentParser
import Foundation
import Mitosis
import MitosisKernel

/// Prints the live resource dependency graph of a process or a process tree.
struct GraphCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "graph",
        abstract: "Show the resources a process (tree) holds and how they depend on each other.",
        discussion: "Formats: text, json (schema: Docs/graph.md), dot (render with `dot -Tpng`). "
            + "Resources that tie the graph to something outside it are marked external, with a reason.")

    @Argument(help: "The process id.") var pid: String
    @Flag(help: "Include the whole process tree below the pid.") var tree = false
    @Option(help: "text, json or dot.") var format: GraphFormat = .text
    @Flag(help: "Leave out memory mappings (and the files only they reach).") var noMappings = false
    @Flag(help: "Leave out threads.") var noThreads = false
    @Flag(help: "Print the dependency closure of the pid (what to capture, what is external) instead.")
    var closure = false
    @Flag(help: "Freeze the process (tree) while reading, for an atomic snapshot.") var freeze = false

    func run() async throws {
        Kernel.keepFreedMemoryForReuse()
        let pid = targetPID(pid, forTracing: freeze)
        let options = GraphOptions(includeDescendants: tree, includeMappings: !noMappings, includeThreads: !noThreads)
        do {
            let graph = try await ResourceGraph.snapshot(of: pid, options: options, freeze: freeze)
            if closure {
                print(try JSONOutput.string(graph.closure(of: pid)))
                return
            }
            switch format {
            case .text: print(graph.text(), terminator: "")
            case .json:
                // The bytes as they are: no String of them, no copy into Data (~6 MB for 10,000 descriptors).
                var bytes = try JSONOutput.bytes(graph)
                bytes.append(UInt8(ascii: "\n"))
                try Kernel.writeAll(.standardOutput, bytes)
            case .dot: print(graph.dot(), terminator: "")
            }
        } catch {
            fail(error)
        }
    }
}

enum GraphFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json, dot
}
