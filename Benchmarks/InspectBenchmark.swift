import ArgumentParser
import Foundation
import Mitosis
import MitosisKernel

/// `mitosis inspect` of a process holding many descriptors, beside `lsof -p PID` on the same
/// process in the same run.
struct InspectBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Introspect a process holding many descriptors, beside lsof -p on the same process.")

    @Option(help: "The pid of a running target; by default a `mitosis-scenario manyfds N` is started.") var pid: Int32?
    @Option(help: "Descriptors the started target opens.") var descriptors: Int = 10_000
    @Option(help: "Repetitions of each measurement.") var runs: Int = 7

    func run() async throws {
        let target = try pid.map { Target(pid: $0) } ?? Target(descriptors: descriptors)
        defer { target.stop() }
        let fdCount = try ProcessReader.descriptors(TargetProcess(pid: target.pid)).count
        print("target \(target.pid): \(fdCount) descriptors, \(try ProcessReader.mappings(TargetProcess(pid: target.pid), detailed: false).count) mappings; \(runs) runs each")

        let lsofPath = ["/usr/bin/lsof", "/usr/sbin/lsof", "/bin/lsof"].first { FileManager.default.isExecutableFile(atPath: $0) }
        // Interleaved, so that machine noise hits every contender alike.
        var fdsOnly: [Duration] = [], full: [Duration] = [], fullNoSmaps: [Duration] = [], lsof: [Duration] = []
        for _ in 0..<runs {
            fdsOnly.append(try measure { _ = try ProcessReader.descriptors(TargetProcess(pid: target.pid)) })
            full.append(try measure { _ = try Introspector.inspect(pid: target.pid) })
            fullNoSmaps.append(try measure { _ = try Introspector.inspect(pid: target.pid, detailedMemory: false) })
            if let lsofPath { lsof.append(try measure { try runQuietly(lsofPath, ["-n", "-P", "-p", String(target.pid)]) }) }
        }
        report("ProcessReader.descriptors", fdsOnly)
        report("Introspector.inspect (smaps)", full)
        report("Introspector.inspect (maps)", fullNoSmaps)
        guard !lsof.isEmpty else {
            print("lsof not installed: no comparison (apt-get install lsof)")
            return
        }
        report("lsof -n -P -p PID", lsof)
        let lsofMedian = median(lsof)
        for (name, samples) in [("descriptors only", fdsOnly), ("full inspect (smaps)", full), ("full inspect (maps)", fullNoSmaps)] {
            print(String(format: "lsof / %@: %.2fx", name, lsofMedian / median(samples)))
        }
    }

    private func measure(_ body: () throws -> Void) throws -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        try body()
        return clock.now - start
    }

    private func median(_ samples: [Duration]) -> Double {
        let sorted = samples.sorted()
        let middle = sorted[sorted.count / 2]
        return Double(middle.components.seconds) + Double(middle.components.attoseconds) / 1e18
    }

    private func report(_ name: String, _ samples: [Duration]) {
        let sorted = samples.sorted()
        print("\(name.padding(toLength: 30, withPad: " ", startingAt: 0)) median \(format(sorted[sorted.count / 2]))  min \(format(sorted[0]))  max \(format(sorted[sorted.count - 1]))")
    }

    private func format(_ duration: Duration) -> String {
        String(format: "%8.2f ms", Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15)
    }

    /// Runs a command with its output discarded and waits for it.
    private func runQuietly(_ executable: String, _ arguments: [String]) throws {
        try ChildProcess(executable: executable, arguments: arguments, stdin: .null, stdout: .null, stderr: .null).wait()
    }

    /// The process measured: given, or a `mitosis-scenario manyfds N` started next to this binary.
    final class Target {
        let pid: Int32
        private let launched: LaunchedTarget?

        init(pid: Int32) {
            self.pid = pid
            launched = nil
        }

        /// Starts the scenario and waits for its READY line: the descriptors are open.
        init(descriptors: Int) throws {
            let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            let target = try LaunchedTarget(executable: directory.appendingPathComponent("mitosis-scenario").path,
                                            arguments: ["manyfds", String(descriptors)])
            launched = target
            pid = target.pid
        }

        /// Closes its stdin (it exits by itself) and reaps it.
        func stop() { launched?.stop() }
    }
}
