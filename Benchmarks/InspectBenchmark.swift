import ArgumentParser
import Foundation
import Glibc
import Mitosis

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
        let fdCount = try ProcessReader.descriptors(pid: target.pid).count
        print("target \(target.pid): \(fdCount) descriptors, \(try ProcessReader.mappings(pid: target.pid, detailed: false).count) mappings; \(runs) runs each")

        let lsofPath = ["/usr/bin/lsof", "/usr/sbin/lsof", "/bin/lsof"].first { FileManager.default.isExecutableFile(atPath: $0) }
        // Interleaved, so that machine noise hits every contender alike.
        var fdsOnly: [Duration] = [], full: [Duration] = [], fullNoSmaps: [Duration] = [], lsof: [Duration] = []
        for _ in 0..<runs {
            fdsOnly.append(try measure { _ = try ProcessReader.descriptors(pid: target.pid) })
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

    /// Runs a command with its output discarded and waits for it. posix_spawn + waitpid on its
    /// own pid: Foundation's `Process` could not reap it while another child (the target) lives.
    private func runQuietly(_ executable: String, _ arguments: [String]) throws {
        let pid = try spawn(executable, arguments, stdin: nil, stdout: nil)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }

    /// The process measured: given, or a `mitosis-scenario manyfds N` started next to this binary.
    final class Target {
        let pid: Int32
        private let commandFD: Int32?

        init(pid: Int32) {
            self.pid = pid
            commandFD = nil
        }

        init(descriptors: Int) throws {
            let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
            guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw ValidationError("pipe: \(errno)") }
            pid = try spawn(directory.appendingPathComponent("mitosis-scenario").path, ["manyfds", String(descriptors)],
                            stdin: toChild[0], stdout: fromChild[1])
            close(toChild[0])
            close(fromChild[1])
            commandFD = toChild[1]
            // Wait for the READY line: the descriptors are open.
            var line: [UInt8] = []
            var byte: UInt8 = 0
            while byte != UInt8(ascii: "\n") {
                guard read(fromChild[0], &byte, 1) == 1 else {
                    throw ValidationError("mitosis-scenario exited before READY (build it: swift build -c release --product mitosis-scenario)")
                }
                line.append(byte)
            }
            close(fromChild[0])
            guard line.starts(with: Array("READY".utf8)) else {
                throw ValidationError("mitosis-scenario: \(String(decoding: line, as: UTF8.self))")
            }
        }

        /// Closes its stdin (it exits by itself) and reaps it.
        func stop() {
            guard let commandFD else { return }
            close(commandFD)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        }
    }
}

/// posix_spawn of `executable` with the given stdin and stdout (nil: /dev/null); stderr too goes to /dev/null.
private func spawn(_ executable: String, _ arguments: [String], stdin: Int32?, stdout: Int32?) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let stdin { posix_spawn_file_actions_adddup2(&actions, stdin, 0) } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    }
    if let stdout { posix_spawn_file_actions_adddup2(&actions, stdout, 1) } else {
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    }
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
    guard rc == 0 else { throw ValidationError("posix_spawn \(executable): \(rc)") }
    return pid
}
