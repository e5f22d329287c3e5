import ArgumentParser
import Foundation
import Mitosis

/// Attach-and-freeze, then thaw (detach), of a many-threaded process.
struct FreezeBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "freeze",
        abstract: "Freeze and thaw a process with many threads.",
        discussion: """
            Without --pid it starts its own target, `mitosis-scenario threads N` from the directory \
            of this binary (build it with `swift build -c release --product mitosis-scenario`).
            """)

    @Option(help: "The pid of a running target; omit to start `mitosis-scenario threads N`.") var pid: Int32?
    @Option(help: "Extra threads of the started target (it has one more, its main thread).") var threads: Int = 63
    @Option(help: "Repetitions.") var runs: Int = 50

    func run() async throws {
        var target: LaunchedTarget?
        defer { target?.kill() }
        let pid: Int32
        if let given = self.pid {
            pid = given
        } else {
            let started = try Self.startScenario(threads: threads)
            target = started
            pid = started.pid
        }
        let clock = ContinuousClock()
        var freezes: [Duration] = [], thaws: [Duration] = []
        var threadCount = 0
        for _ in 0..<runs {
            let start = clock.now
            let tracer = try await Tracer.freeze(pid: pid)
            let frozen = clock.now
            threadCount = await tracer.threads.count
            await tracer.thaw()
            thaws.append(clock.now - frozen)
            freezes.append(frozen - start)
        }
        print("\(threadCount) threads, \(runs) runs")
        print("attach and freeze: \(Self.summary(freezes))")
        print("thaw (detach):     \(Self.summary(thaws))")
    }

    static func summary(_ samples: [Duration]) -> String {
        let sorted = samples.sorted()
        func ms(_ d: Duration) -> String { String(format: "%.3f ms", Double(d.components.attoseconds) / 1e15 + Double(d.components.seconds) * 1000) }
        return "median \(ms(sorted[sorted.count / 2])), min \(ms(sorted[0])), max \(ms(sorted[sorted.count - 1]))"
    }

    /// Starts `mitosis-scenario threads N` next to this executable and waits for its READY line.
    static func startScenario(threads: Int) throws -> LaunchedTarget {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        return try LaunchedTarget(executable: directory.appendingPathComponent("mitosis-scenario").path,
                                  arguments: ["threads", String(threads)])
    }
}
