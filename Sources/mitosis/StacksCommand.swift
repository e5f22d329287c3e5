import ArgumentParser
import Foundation
import Mitosis
import MitosisStacks

/// Prints the call stack of every thread of a process, like eu-stack, or samples them into
/// folded stacks for flame graphs.
struct StacksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stacks",
        abstract: "Print the call stack of every thread of a process, or sample them into folded stacks.")

    @Argument(help: "The process id.") var pid: String
    @Flag(help: "Print JSON: {\"pid\", \"threads\": [{\"tid\", \"name\", \"frames\": [{\"pc\", \"function\", \"offset\", \"module\", \"build_id\"}], \"truncated\"}]}.")
    var json = false
    @Option(help: "Sample this many times a second instead of printing one snapshot.") var sample: Double?
    @Option(help: "How long to sample, in seconds.") var duration: Double = 5
    @Flag(help: "Print samples as folded stacks (`thread;outer;…;inner count`), which flame-graph tools read; the output of --sample.")
    var folded = false
    @Option(help: "The most frames to walk per thread.") var maxFrames: Int = Tracer.defaultMaxFrames

    func validate() throws {
        if let sample, !(sample > 0 && sample <= 1000) { throw ValidationError("--sample must be between 0 and 1000 per second") }
        if !(duration > 0) { throw ValidationError("--duration must be positive") }
        if folded && sample == nil { throw ValidationError("--folded needs --sample HZ") }
        if sample != nil && json { throw ValidationError("--json prints one snapshot; use --folded with --sample") }
        if maxFrames < 1 { throw ValidationError("--max-frames must be at least 1") }
    }

    func run() async throws {
        let pid = targetPID(pid, forTracing: true)
        do {
            if let sample {
                let profile = try await StackSampler.run(pid: pid, hertz: sample, duration: .seconds(duration), maxFrames: maxFrames)
                print(profile.folded(), terminator: "")
                FileHandle.standardError.write(Data("mitosis: \(profile.summary)\n".utf8))
                return
            }
            let stacks = try await ProcessStacks.capture(pid: pid, maxFrames: maxFrames)
            print(json ? try JSONOutput.string(stacks) : stacks.text(), terminator: json ? "\n" : "")
        } catch {
            fail(error)
        }
    }
}
