import ArgumentParser
import Foundation
import Mitosis

/// Freezes a process for a moment and thaws it: the smallest proof that attaching is harmless.
struct FreezeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "freeze",
        abstract: "Freeze every thread of a process for a moment, then let it run on as before.")

    @Argument(help: "The process id.") var pid: String
    @Option(help: "How long to keep it frozen, in milliseconds.") var milliseconds: Int = 0
    @Flag(help: "Freeze the whole process tree below the pid too.") var tree = false

    func run() async throws {
        let pid = targetPID(pid, forTracing: true)
        let clock = ContinuousClock()
        do {
            let start = clock.now
            let threads = try await withFrozenProcess(pid, includeDescendants: tree) { tracer in
                if milliseconds > 0 { try await Task.sleep(for: .milliseconds(milliseconds)) }
                return await tracer.threads
            }
            let elapsed = clock.now - start
            print("froze \(threads.count) threads of \(Set(threads.map(\.pid)).count) process(es) for \(elapsed), thawed")
        } catch {
            fail(error)
        }
    }
}
