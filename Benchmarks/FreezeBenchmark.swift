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
        var target: Target?
        defer { target.map(Self.stop) }
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

    /// A started `mitosis-scenario`: killed and reaped by `stop()`, and it exits by itself when
    /// its stdin (our pipe) closes. Spawned with posix_spawn, not Foundation's Process, whose
    /// child monitor would call waitpid on it and steal the ptrace stops this benchmark waits for.
    struct Target {
        let pid: Int32
        let commandFD: Int32
    }

    /// Starts `mitosis-scenario threads N` next to this executable and waits for its READY line.
    static func startScenario(threads: Int) throws -> Target {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let executable = directory.appendingPathComponent("mitosis-scenario").path
        var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw ValidationError("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        let arguments: [String] = [executable, "threads", String(threads)]
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        defer { close(fromChild[0]) }
        guard rc == 0 else { throw ValidationError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        let target = Target(pid: pid, commandFD: toChild[1])
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while byte != UInt8(ascii: "\n") {
            guard read(fromChild[0], &byte, 1) == 1 else {
                stop(target)
                throw ValidationError("mitosis-scenario exited before READY")
            }
            line.append(byte)
        }
        guard line.starts(with: Array("READY".utf8)) else {
            stop(target)
            throw ValidationError("mitosis-scenario: \(String(decoding: line, as: UTF8.self))")
        }
        return target
    }

    static func stop(_ target: Target) {
        kill(target.pid, SIGKILL)
        var status: Int32 = 0
        waitpid(target.pid, &status, 0)
        close(target.commandFD)
    }
}
