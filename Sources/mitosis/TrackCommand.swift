import ArgumentParser
import Foundation
import Mitosis

/// A chain of incremental checkpoints taken at an interval, tracking writes in between.
struct TrackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Keep a chain of incremental checkpoints of a running process: DIR/1 (full), DIR/2, …",
        discussion: """
            Dirty tracking stays on between checkpoints, so each one stores only the pages written \
            since the previous one, which is its parent. The process keeps running; tracking leaves \
            nothing in it when the command ends.
            """)

    @Argument(help: "The process id.") var pid: String
    @Option(help: "The directory to hold the chain (created, mode 0700, if missing; 1, 2, … must not exist).") var images: String
    @Option(help: "Milliseconds between checkpoints.") var interval: Int = 1000
    @Option(help: "How many checkpoints to take.") var count: Int = 3
    @Option(help: "Dirty tracking: \(TrackOption.allCases.map(\.rawValue).joined(separator: ", ")).") var track: TrackOption = .auto
    @Flag(help: "Copy the process even if it asked not to be dumped (prctl PR_SET_DUMPABLE 0, or changed credentials).")
    var force = false
    @Flag(help: "Print the results as a JSON array.") var json = false

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard interval >= 0 else { throw ValidationError("--interval must not be negative") }
    }

    func run() async throws {
        let pid = targetPID(pid, forTracing: true)
        do {
            guard !images.isEmpty else { throw ImageError.invalidImageName(images) }
            var options = CheckpointOptions(strategy: track.strategy)
            options.copyNonDumpable = force
            let session = try await CheckpointSession(pid: pid, options: options)
            var summaries: [CheckpointSummary] = []
            do {
                // Only once the target may be traced, so that a refused run leaves nothing behind.
                try DirectorySink.createDirectories(images)
                for number in 1...count {
                    if number > 1 { try await Task.sleep(for: .milliseconds(interval)) }
                    let path = images + "/\(number)"
                    let parent: CheckpointParent? = number == 1 ? nil : .previous(path: "../\(number - 1)")
                    let result = try await session.checkpoint(to: DirectorySink(directory: path), parent: parent)
                    let summary = CheckpointSummary(result, path: path)
                    summaries.append(summary)
                    if !json { print(summary.text) }
                }
            } catch {
                await session.stop()
                throw error
            }
            await session.stop()
            if json { print(try JSONOutput.string(summaries)) }
        } catch {
            fail(error)
        }
    }
}
