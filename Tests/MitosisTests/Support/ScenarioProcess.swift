import Foundation
import Glibc
import CMitosis
import SystemPackage
@testable import MitosisKernel

/// A running `mitosis-scenario` child: a real process in a known state.
///
/// It is killed and reaped when the value is released (use `defer { child.stop() }` too), and it
/// exits by itself when its stdin closes, so no child outlives a failing or crashing test.
final class ScenarioProcess: @unchecked Sendable {
    let pid: Int32
    /// The facts the scenario reported on its last READY line (`key=value`).
    private(set) var facts: [String: String] = [:]
    private let child: ChildProcess
    private let commandFD: Int32
    private let reportFD: Int32
    private var buffered: [UInt8] = []

    /// The directory holding the test bundle and the executables it depends on.
    static let buildDirectory: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // Test bundles live inside `X.xctest/` on some layouts.
        while url.path.contains(".xctest") { url.deleteLastPathComponent() }
        return url.path
    }()

    static func executable(_ name: String) -> String { buildDirectory + "/" + name }

    /// The thread every scenario is spawned from; it lives as long as the test process.
    private static let spawner = DedicatedThreadExecutor(name: "scenario-spawner")

    /// Starts `mitosis-scenario NAME ARGS…` and waits for its READY line.
    /// - Parameter pid: a pid the child must have (free, below `pid_max`): set through
    ///   `/proc/sys/kernel/ns_last_pid`, retried while other tests' children take it first.
    /// - Parameter prefix: a command that execs the scenario (`ip netns exec HOST`), keeping its pid.
    ///
    /// Async, as every wait of a test is: a test that blocked a thread of the cooperative pool
    /// (two threads on this machine) while its child answered held up every other test of the
    /// parallel run, by tens of seconds on a loaded one.
    init(_ name: String, _ arguments: [String] = [], executable: String = ScenarioProcess.executable("mitosis-scenario"),
         pid wanted: Int32? = nil, prefix: [String] = []) async throws {
        // The child dies with the thread that spawned it (PR_SET_PDEATHSIG follows the forking
        // thread), and the thread pool retires idle threads: spawn from one thread that lives on.
        // An executable a test has just copied can be busy for a moment: a child another test
        // forks in between holds the copy's descriptor until it execs, and exec refuses a file
        // open for writing (ETXTBSY).
        @Sendable func spawn() throws -> ChildProcess {
            var busy = 0
            while true {
                do {
                    return try ScenarioProcess.spawner.sync { () throws -> ChildProcess in
                        let command = prefix + [executable, name] + arguments
                        guard let wanted else { return try ChildProcess(executable: command[0], arguments: Array(command.dropFirst())) }
                        // The pid counter goes back to where it was right after the fork: left
                        // at `wanted`, the parallel run's next forks would take the pids after
                        // it — pids other tests freed with `dump --kill` and restore under the
                        // same number (the restore then fails: "creating thread N: File exists").
                        let counter = "/proc/sys/kernel/ns_last_pid"
                        let last = try String(contentsOfFile: counter, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
                        try String(wanted - 1).write(toFile: counter, atomically: false, encoding: .utf8)
                        defer { try? last.write(toFile: counter, atomically: false, encoding: .utf8) }
                        return try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()))
                    }
                } catch let error as Errno where error == .textFileBusy && busy < 100 {
                    busy += 1
                    Kernel.sleepThread(microseconds: 10_000)
                }
            }
        }
        child = try await Blocking.run("scenario-spawn") { () throws -> ChildProcess in
            var spawned = try spawn()
            var attempts = 1
            while let wanted, spawned.pid != wanted {
                spawned.kill()
                // A loaded parallel run forks all the time: try for longer, leaving others room.
                guard attempts < 1000 else { throw ScenarioError.spawn("pid \(wanted) could not be had") }
                attempts += 1
                if attempts % 100 == 0 { Kernel.sleepThread(microseconds: 20_000) }
                spawned = try spawn()
            }
            return spawned
        }
        pid = child.pid
        commandFD = child.input!
        reportFD = child.output!
        do { try await awaitReady() } catch { stop(); throw error }
    }

    /// Sends one command line and waits for the scenario's next READY line.
    func send(_ command: String) async throws {
        let line = Array((command + "\n").utf8)
        guard write(commandFD, line, line.count) == line.count else { throw ScenarioError.protocolError("write failed") }
        try await awaitReady()
    }

    func fact(_ key: String) throws -> String {
        guard let value = facts[key] else { throw ScenarioError.protocolError("scenario did not report \(key)") }
        return value
    }

    func intFact(_ key: String) throws -> Int {
        guard let value = Int(try fact(key)) else { throw ScenarioError.protocolError("\(key) is not a number") }
        return value
    }

    private func awaitReady(timeoutSeconds: Int = 20) async throws {
        let deadline = Date().addingTimeInterval(Double(timeoutSeconds))
        while true {
            if let newline = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<newline], as: UTF8.self)
                buffered.removeSubrange(...newline)
                if line.hasPrefix("READY") {
                    facts = [:]
                    for pair in line.dropFirst(5).split(separator: " ") {
                        let parts = pair.split(separator: "=", maxSplits: 1)
                        if parts.count == 2 { facts[String(parts[0])] = String(parts[1]) }
                    }
                    return
                }
                if line.hasPrefix("FAIL") { throw ScenarioError.protocolError(line) }
                continue
            }
            let remaining = Int(deadline.timeIntervalSinceNow * 1000)
            guard remaining > 0 else { throw ScenarioError.protocolError("timed out waiting for READY") }
            let fd = reportFD
            let readable = try await Blocking.run("scenario-wait") { () -> Bool in
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                return poll(&poller, 1, Int32(remaining)) > 0
            }
            if !readable { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(reportFD, &chunk, chunk.count)
            if n <= 0 { throw ScenarioError.protocolError("scenario exited before READY") }
            buffered += chunk[0..<n]
        }
    }

    /// Whether the child is still alive (not exited, not a zombie we have not reaped).
    var isAlive: Bool { child.isRunning }

    /// Kills and reaps the child. Idempotent.
    func stop() { child.kill() }

    deinit { stop() }
}

enum ScenarioError: Error, CustomStringConvertible {
    case spawn(String)
    case protocolError(String)
    var description: String {
        switch self {
        case .spawn(let s): return "spawn failed: \(s)"
        case .protocolError(let s): return "scenario: \(s)"
        }
    }
}
