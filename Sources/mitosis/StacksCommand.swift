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
    @Option(help: "Sample this many times a second (0.01 to 1000) instead of printing one snapshot.") var sample: Double?
    @Option(help: "How long to sample, in seconds (at most 3600).") var duration: Double = 5
    @Flag(help: "Print samples as folded stacks (`thread;outer;…;inner count`), which flame-graph tools read; the output of --sample.")
    var folded = false
    @Option(help: "The most frames to walk per thread (1 to \(Tracer.maxFramesLimit)).") var maxFrames: Int = Tracer.defaultMaxFrames

    func validate() throws {
        let rates = StackSampler.hertzRange, longest = StackSampler.maxDuration.components.seconds
        if let sample, !rates.contains(sample) {
            throw ValidationError("--sample must be between \(rates.lowerBound) and \(Int(rates.upperBound)) per second")
        }
        if !(duration > 0 && duration <= Double(longest)) { throw ValidationError("--duration must be more than 0 and at most \(longest) seconds") }
        if folded && sample == nil { throw ValidationError("--folded needs --sample HZ") }
        if sample != nil && json { throw ValidationError("--json prints one snapshot; use --folded with --sample") }
        if !(1...Tracer.maxFramesLimit).contains(maxFrames) { throw ValidationError("--max-frames must be between 1 and \(Tracer.maxFramesLimit)") }
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
