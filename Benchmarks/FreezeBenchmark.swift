import ArgumentParser
import Foundation
import Mitosis

/// Attach-and-freeze then thaw of a many-threaded process.
struct FreezeBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "freeze", abstract: "Freeze and thaw a process with many threads.")

    @Option(help: "The pid of a running target (e.g. `mitosis-scenario threads 63`).") var pid: Int32
    @Option(help: "Repetitions.") var runs: Int = 50

    func run() async throws {
        let clock = ContinuousClock()
        var samples: [Duration] = []
        var threadCount = 0
        for _ in 0..<runs {
            let start = clock.now
            threadCount = try await withFrozenProcess(pid) { await $0.threads.count }
            samples.append(clock.now - start)
        }
        samples.sort()
        print("freeze+thaw of \(threadCount) threads: median \(samples[samples.count / 2]), min \(samples[0]), max \(samples[samples.count - 1]) over \(runs) runs")
    }
}
