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

    @Flag(help: "Also count the instructions of `mitosis inspect --json` and lsof under valgrind's callgrind (slow).") var callgrind = false

    func run() async throws {
        let target = try pid.map { Target(pid: $0) } ?? Target(descriptors: descriptors)
        defer { target.stop() }
        let fdCount = try ProcessReader.descriptors(TargetProcess(pid: target.pid)).count
        print("target \(target.pid): \(fdCount) descriptors, \(try ProcessReader.mappings(TargetProcess(pid: target.pid), detailed: false).count) mappings; \(runs) runs each")

        let lsofPath = ["/usr/bin/lsof", "/usr/sbin/lsof", "/bin/lsof"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let mitosis = siblingExecutable("mitosis"), pidArgument = String(target.pid)
        let lsofArguments = ["-n", "-P", "-p", pidArgument]
        // Interleaved, so that machine noise hits every contender alike.
        var samples = Samples()
        for _ in 0..<runs {
            samples.add("mitosis inspect --json (CLI)", try TimedRun.run(mitosis, ["inspect", pidArgument, "--json"]))
            samples.add("mitosis inspect (CLI, text)", try TimedRun.run(mitosis, ["inspect", pidArgument]))
            if let lsofPath { samples.add("lsof -n -P -p PID", try TimedRun.run(lsofPath, lsofArguments)) }
            samples.add("ProcessReader.descriptors", wall: try measure { _ = try ProcessReader.descriptors(TargetProcess(pid: target.pid)) })
            samples.add("Introspector.inspect (smaps)", wall: try measure { _ = try Introspector.inspect(pid: target.pid) })
            let model = try Introspector.inspect(pid: target.pid)
            samples.add("JSON: JSONWriter", wall: try measure { _ = try JSONOutput.bytes(model) })
            samples.add("JSON: Foundation JSONEncoder", wall: try measure { _ = try JSONOutput.encoder().encode(model) })
        }
        for name in ["mitosis inspect --json (CLI)", "mitosis inspect (CLI, text)", "lsof -n -P -p PID", "ProcessReader.descriptors",
                     "Introspector.inspect (smaps)", "JSON: JSONWriter", "JSON: Foundation JSONEncoder"] where samples.wall[name] != nil {
            print(samples.line(name))
        }
        guard lsofPath != nil else {
            print("lsof not installed: no comparison (apt-get install lsof)")
            return
        }
        for name in ["mitosis inspect --json (CLI)", "mitosis inspect (CLI, text)"] {
            print(String(format: "lsof / %@: %.2fx wall, %.2fx cpu (goal: 2x)", name,
                         samples.median("lsof -n -P -p PID") / samples.median(name),
                         samples.median("lsof -n -P -p PID", cpu: true) / samples.median(name, cpu: true)))
        }
        if callgrind, let lsofPath {
            let ours = try TimedRun.instructions(mitosis, ["inspect", pidArgument, "--json"])
            let peer = try TimedRun.instructions(lsofPath, lsofArguments)
            print("callgrind instructions: mitosis inspect --json \(ours.map(String.init) ?? "n/a"), lsof \(peer.map(String.init) ?? "n/a")")
        }
    }

    private func measure(_ body: () throws -> Void) throws -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        try body()
        return clock.now - start
    }

    /// The process measured: given, or a `mitosis-scenario manyfds N` (or another scenario) started next to this binary.
    final class Target {
        let pid: Int32
        private let launched: LaunchedTarget?

        init(pid: Int32) {
            self.pid = pid
            launched = nil
        }

        /// Starts the scenario and waits for its READY line: the descriptors are open.
        init(descriptors: Int, scenario: String = "manyfds") throws {
            let target = try LaunchedTarget(executable: siblingExecutable("mitosis-scenario"), arguments: [scenario, String(descriptors)])
            launched = target
            pid = target.pid
        }

        /// Closes its stdin (it exits by itself) and reaps it.
        func stop() { launched?.stop() }
    }
}
