import Foundation
import Glibc
import Testing
@testable import Mitosis

/// Mitosis killed in the middle of a syscall injection (F1): the target must live on as if
/// nothing happened. Each test runs `mitosis dump` (which injects userfaultfd() and close() at
/// session start) against `victim` scenarios, kills it, waits 2 s, and asks every target for
/// its self-check: registers, FPU rounding mode, system-call results and progress.
@Suite("Killing Mitosis during an injection", .serialized)
struct InjectionKillTests {
    /// The main thread's states that `victim` offers (see Tests/Scenario/scenario_victim.c).
    static let modes = ["sleep", "read", "futex", "busy"]

    @Test("SIGKILL at every step of an injection leaves every target alive and well")
    func killAtEveryStep() throws {
        let steps = try Self.injectionSteps()
        #expect(steps.count == 11, "the stub, then 5 steps each for userfaultfd() and close(): \(steps)")
        // Every step for a target asleep and a busy one; for the other blocking states, the steps
        // of the first call from borrowing the registers to restoring them.
        let cases = ["sleep", "busy"].flatMap { mode in (1...steps.count).map { (mode, $0) } }
            + ["read", "futex"].flatMap { mode in (3...6).map { (mode, $0) } }
        var runs: [(target: ScenarioProcess, what: String)] = []
        defer { runs.forEach { $0.target.stop() } }
        for (mode, step) in cases {  // one at a time: on 2 cores, parallel starts gain nothing
            let target = try ScenarioProcess("victim", [mode])
            let tool = try PausingTool(target: target.pid, pause: "\(step)")
            runs.append((target, "\(mode) step \(step)"))
            let line = tool.awaitPause()
            tool.kill(SIGKILL)
            #expect(line != nil, "\(mode) step \(step): mitosis never paused: \(tool.output)")
        }
        usleep(2_000_000)
        for run in runs { try Self.expectHealthy(run.target, run.what) }
    }

    @Test("SIGTERM, SIGINT, SIGHUP and SIGPIPE wait until the registers are back, then end Mitosis")
    func catchableSignalsHeld() throws {
        var runs: [(target: ScenarioProcess, what: String)] = []
        defer { runs.forEach { $0.target.stop() } }
        // Paused 300 ms with borrowed registers (steps 3 and 8), or after the call, before they
        // are restored (5 and 10); one at a time, so that the signal surely comes early in the pause.
        for (signal, mode, step) in [(SIGTERM, "sleep", "3:300"), (SIGINT, "busy", "5:300"),
                                     (SIGHUP, "futex", "8:300"), (SIGPIPE, "busy", "10:300")] {
            do {
                let target = try ScenarioProcess("victim", [mode])
                let what = "\(mode) \(step) signal \(signal)"
                runs.append((target, what))
                let tool = try PausingTool(target: target.pid, pause: step)
                #expect(tool.awaitPause() != nil, "\(what): \(tool.output)")
                let sent = ContinuousClock.now
                Glibc.kill(tool.pid, signal)  // process-directed, as kill(1) and a terminal send it
                tool.process.waitUntilExit()
                // It ended when the registers were back (the pause over), not when the signal came.
                #expect(ContinuousClock.now - sent > .milliseconds(200), "\(what)")
                #expect(tool.process.terminationReason == .uncaughtSignal, "\(what)")
                #expect(tool.process.terminationStatus == signal, "\(what)")
            }
        }
        usleep(2_000_000)
        for run in runs { try Self.expectHealthy(run.target, run.what) }
    }

    @Test("SIGKILL at random moments of a dump leaves the target alive and well")
    func randomKills() throws {
        var runs: [(ScenarioProcess, String)] = []
        defer { runs.forEach { $0.0.stop() } }
        for (index, mode) in ["sleep", "busy", "read", "futex", "sleep", "busy"].enumerated() {
            let target = try ScenarioProcess("victim", [mode])
            let tool = try PausingTool(target: target.pid, pause: nil, force: false)
            let delay = UInt32.random(in: 0...350_000)
            usleep(delay)
            tool.kill(SIGKILL)
            runs.append((target, "\(mode) run \(index) killed after \(delay / 1000) ms"))
        }
        usleep(2_000_000)
        for (target, what) in runs { try Self.expectHealthy(target, what) }
    }

    /// The steps one `mitosis dump` goes through, from the hook's report-only mode.
    static func injectionSteps() throws -> [String] {
        let target = try ScenarioProcess("victim", ["sleep"])
        defer { target.stop() }
        let tool = try PausingTool(target: target.pid, pause: "0")
        tool.process.waitUntilExit()
        #expect(tool.process.terminationStatus == 0, "\(tool.output)")
        return tool.output.split(separator: "\n").filter { $0.contains("injection step") }.map(String.init)
    }

    static func expectHealthy(_ target: ScenarioProcess, _ what: String) throws {
        #expect(target.isAlive, "\(what): target died")
        guard target.isAlive else { return }
        #expect(try TargetHealth.runsFreely(target.pid), "\(what): target traced or stopped")
        try target.send("check")
        let check = try target.fact("check")
        #expect(check == "PASS", "\(what): \(check)")
    }
}

/// `mitosis dump TARGET` started with the injection pause hook (see `InjectionPauseHook`).
final class PausingTool {
    let process = Process()
    let images: String
    private let errorPipe = Pipe()
    private var collected: [UInt8] = []

    var pid: Int32 { process.processIdentifier }
    var output: String { drain(); return String(decoding: collected, as: UTF8.self) }

    /// `force`: skip the dumpable check, whose own injection (prctl) would add steps.
    init(target: Int32, pause: String?, force: Bool = true) throws {
        images = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-kill-\(UUID().uuidString)").path
        process.executableURL = URL(fileURLWithPath: ToolRun.mitosis)
        process.arguments = ["dump", String(target), "--images", images] + (force ? ["--force"] : [])
        var environment = ProcessInfo.processInfo.environment
        environment["MITOSIS_TEST_INJECTION_PAUSE"] = pause
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errorPipe
        try process.run()
    }

    /// The hook's pause line, or nil if Mitosis ended (or 20 s passed) without pausing.
    func awaitPause() -> String? {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let line = output.split(separator: "\n").first(where: { $0.contains("paused at step") }) { return String(line) }
            var poller = pollfd(fd: errorPipe.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, 100) > 0, !readSome() { return nil }
        }
        return nil
    }

    func kill(_ signal: Int32) {
        Glibc.kill(pid, signal)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: images)
    }

    /// Reads what is available; false at end of file.
    @discardableResult
    private func readSome() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let n = read(errorPipe.fileHandleForReading.fileDescriptor, &chunk, chunk.count)
        if n > 0 { collected += chunk[0..<n] }
        return n > 0
    }

    private func drain() {
        while true {
            var poller = pollfd(fd: errorPipe.fileHandleForReading.fileDescriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 0) > 0, readSome() else { return }
        }
    }

    deinit {
        if process.isRunning { Glibc.kill(pid, SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: images)
    }
}
