import ArgumentParser
import Foundation
import Mitosis

/// Streams the changes of a process's resource graph as JSON lines while it runs.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Stream changes of a process's resource graph as JSON lines while it runs.",
        discussion: "Each line is {\"change\": \"added\"|\"removed\"|\"changed\", \"node\" or \"edge\": …}; "
            + "the first lines add the whole graph. Ends when the process exits.")

    @Argument(help: "The process id.") var pid: String
    @Flag(help: "Include the whole process tree below the pid.") var tree = false
    @Option(help: "Milliseconds between snapshots.") var interval: Int = 500
    @Flag(help: "Leave out memory mappings.") var noMappings = false
    @Flag(help: "Freeze the process (tree) briefly for each snapshot, so that each is atomic.") var freeze = false

    func run() async throws {
        let pid = targetPID(pid, forTracing: freeze)
        let options = GraphOptions(includeDescendants: tree, includeMappings: !noMappings)
        let encoder = JSONOutput.encoder(pretty: false)
        do {
            for try await diff in ResourceGraph.changes(of: pid, options: options, interval: .milliseconds(max(interval, 1)), freeze: freeze) {
                for record in diff.records {
                    FileHandle.standardOutput.write(try encoder.encode(record) + Data("\n".utf8))
                }
            }
        } catch {
            fail(error)
        }
    }
}
