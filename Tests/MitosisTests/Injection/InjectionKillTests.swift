import Foundation
import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisRestore
@testable import MitosisTrace

/// Mitosis killed in the middle of a syscall injection (F1): the target must live on as if
/// nothing happened. Each test runs `mitosis dump` (which injects userfaultfd() and close() at
/// session start) against `victim` scenarios, kills it, waits 2 s, and asks every target for
/// its self-check: registers, FPU rounding mode, system-call results and progress.
@Suite("Killing Mitosis during an injection", .serialized)
struct InjectionKillTests {
    @Test("SIGKILL at every step of an injection leaves every target alive and well")
    func killAtEveryStep() async throws {
        let steps = try await Self.injectionSteps()
        #expect(steps.count == 11, "the stub, then 5 steps each for userfaultfd() and close(): \(steps)")
        // The victim's main thread (the one that lends its registers) is in nanosleep, read, futex
        // wait, or busy in user space. Every step for a target asleep and a busy one; for the
        // other blocking states, the steps
        // of the first call from borrowing the registers to restoring them.
        let cases = ["sleep", "busy"].flatMap { mode in (1...steps.count).map { (mode, $0) } }
            + ["read", "futex"].flatMap { mode in (3...6).map { (mode, $0) } }
        // In batches: targets live until they are checked, 2 s after their kill, and a crowd of
        // busy victims would starve the rest of a parallel test run on 2 cores.
        for batch in stride(from: 0, to: cases.count, by: 5).map({ cases[$0..<min($0 + 5, cases.count)] }) {
            var runs: [(target: ScenarioProcess, what: String)] = []
            defer { runs.forEach { $0.target.stop() } }
            for (mode, step) in batch {  // one at a time: on 2 cores, parallel starts gain nothing
                let target = try await ScenarioProcess("victim", [mode])
                runs.append((target, "\(mode) step \(step)"))
                let line = try await Self.killAtPause(target, "\(step)")
                #expect(line != nil, "\(mode) step \(step): mitosis never paused")
            }
            try await Task.sleep(for: .seconds(2))
            for run in runs { try await Self.expectHealthy(run.target, run.what) }
        }
    }

    @Test("SIGKILL while an injected program runs (the restore record's questions) leaves every target alive and well")
    func killDuringAProgram() async throws {
        let steps = try await Self.injectionSteps(restoreState: true)
        // The first program: started (its calls not yet run), and ended (run, registers not yet back).
        let chosen = ["program-started", "program-ended"].compactMap { name in
            steps.firstIndex { $0.contains(" \(name) ") }.map { $0 + 1 }
        }
        #expect(chosen.count == 2, "\(steps)")
        var runs: [(target: ScenarioProcess, what: String)] = []
        defer { runs.forEach { $0.target.stop() } }
        for mode in ["sleep", "busy", "read", "futex"] {
            for step in chosen {
                let target = try await ScenarioProcess("victim", [mode])
                runs.append((target, "\(mode) step \(step)"))
                let line = try await Self.killAtPause(target, "\(step)", restoreState: true)
                #expect(line?.contains("program-") == true, "\(mode) step \(step): \(line ?? "mitosis never paused")")
            }
        }
        try await Task.sleep(for: .seconds(2))
        for run in runs { try await Self.expectHealthy(run.target, run.what) }
    }

    @Test("Mitosis SIGKILLed mid-injection twice in a row: the second run heals through the stubs the first left in the vDSO, and leaves them there")
    func killTwiceInARow() async throws {
        var runs: [(target: ScenarioProcess, what: String)] = []
        defer { runs.forEach { $0.target.stop() } }
        for mode in ["sleep", "busy"] {
            let target = try await ScenarioProcess("victim", [mode])
            runs.append((target, "\(mode), killed twice"))
            let vdso = try Self.vdsoTail(of: target.pid, count: 80)
            #expect(vdso.allSatisfy { $0 == 0 }, "\(mode): the vDSO's last bytes are not free before the first run")
            for run in 1...2 {
                // Step 3: the first call's registers borrowed (after the stub and the frame).
                let line = try await Self.killAtPause(target, "3")
                #expect(line?.contains("registers-borrowed") == true, "\(mode) run \(run): \(line ?? "mitosis never paused")")
                try await Task.sleep(for: .milliseconds(500))
                #expect(try Self.vdsoTail(of: target.pid, count: 80) == Tracer.stubLayouts[0], "\(mode) run \(run): the stubs are not in the vDSO")
            }
            // A dump that completes records the vDSO as the kernel made it (restorable on this
            // kernel), and leaves the stubs it found.
            let images = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-kill-\(UUID().uuidString)").path
            defer { try? FileManager.default.removeItem(atPath: images) }
            let dump = try await ToolRun(ToolRun.mitosis, ["dump", "\(target.pid)", "--images", images, "--force"])
            #expect(dump.status == 0, "\(dump.standardError)")
            let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: images + "/manifest.json"))) as? [String: Any]
            let recorded = ((manifest?["restore"] as? [String: Any])?["vdso"] as? [String: Any])?["xxh64"] as? String
            #expect(recorded == (try HostVdso.read().xxh64), "\(mode): the recorded vDSO is not this kernel's")
            #expect(try Self.vdsoTail(of: target.pid, count: 80) == Tracer.stubLayouts[0], "\(mode): the stubs are gone after a dump")
        }
        try await Task.sleep(for: .seconds(2))
        for run in runs { try await Self.expectHealthy(run.target, run.what) }
    }

    /// Runs `mitosis dump` against `target` with the injection hook's pause at `pause`, SIGKILLs
    /// it there, and returns the hook's pause line (nil: Mitosis never paused).
    static func killAtPause(_ target: ScenarioProcess, _ pause: String, restoreState: Bool = false) async throws -> String? {
        let tool = try PausingTool(target: target.pid, pause: pause, restoreState: restoreState)
        let line = try await tool.awaitPause()
        try await tool.end(SIGKILL)
        return line
    }

    /// The last `count` bytes of `pid`'s `[vdso]` mapping.
    static func vdsoTail(of pid: Int32, count: Int) throws -> [UInt8] {
        let maps = try String(decoding: Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self)
        let line = try #require(maps.split(separator: "\n").first { $0.hasSuffix("[vdso]") })
        let end = try #require(UInt64(line.split(separator: " ")[0].split(separator: "-")[1], radix: 16))
        var bytes = [UInt8](repeating: 0, count: count)
        let read = try bytes.withUnsafeMutableBytes { buffer in try Kernel.readMemory(pid: pid, address: end - UInt64(count), into: buffer) }
        #expect(read == count)
        return bytes
    }

    @Test("SIGKILL mid-injection into a thread the kernel resumes through restart_syscall (its nanosleep stopped and continued): the sleep goes on to its end, no EINTR")
    func killWhileResumingThroughRestartSyscall() async throws {
        let programSteps = try await Self.injectionSteps(restoreState: true)
        let programStarted = try #require(programSteps.firstIndex { $0.contains(" program-started ") }, "\(programSteps)") + 1
        // The first injected call with its registers borrowed and at its exit; the first program started.
        let cases = [("3", false), ("5", false), ("\(programStarted)", true)]
        var runs: [(target: ScenarioProcess, what: String)] = []
        defer { runs.forEach { $0.target.stop() } }
        for (step, restoreState) in cases {
            let target = try await ScenarioProcess("victim", ["nap"])
            let what = "nap step \(step)"
            runs.append((target, what))
            // Stopped and continued mid-sleep, the main thread sleeps on in restart_syscall (219).
            try await Task.sleep(for: .milliseconds(100))
            kill(target.pid, SIGSTOP)
            for _ in 0..<100 where try TargetHealth.threadStates(of: target.pid)[target.pid] != "T" { try await Task.sleep(for: .milliseconds(5)) }
            kill(target.pid, SIGCONT)
            try await Task.sleep(for: .milliseconds(20))
            let call = try String(decoding: Kernel.readFile("/proc/\(target.pid)/syscall"), as: UTF8.self)
            #expect(call.hasPrefix("219 "), "\(what): the main thread is not in restart_syscall: \(call)")
            let line = try await Self.killAtPause(target, step, restoreState: restoreState)
            #expect(line != nil, "\(what): mitosis never paused")
        }
        try await Task.sleep(for: .seconds(2))
        for run in runs { try await Self.expectHealthy(run.target, run.what) }
    }

    @Test("the target SIGKILLed while injected programs run on its threads: the dump ends saying so, and the target's parent reaps it")
    func targetKilledDuringPrograms() async throws {
        let steps = try await Self.injectionSteps(restoreState: true)
        // The last program started before the first one ended: the other threads' programs
        // (the main thread's first) have run, and wait at their end to be collected.
        let firstEnd = try #require(steps.firstIndex { $0.contains(" program-ended ") }, "\(steps)")
        let step = try #require(steps[..<firstEnd].lastIndex { $0.contains(" program-started ") }, "\(steps)") + 1
        #expect(steps[..<firstEnd].filter { $0.contains(" program-started ") }.count >= 3, "programs on several threads: \(steps)")
        let target = try await ScenarioProcess("victim", ["sleep"])
        defer { target.stop() }
        let tool = try PausingTool(target: target.pid, pause: "\(step):1000", restoreState: true)
        let line = try await tool.awaitPause()
        #expect(line?.contains("program-started") == true, "\(line ?? "mitosis never paused")")
        kill(target.pid, SIGKILL)
        // The main thread's exit waits for its other threads to be reaped, and only their tracer
        // can: a tracer blocked on the main thread alone never returned.
        let (ended, output) = try await tool.awaitEnd(timeout: .seconds(30))
        #expect(ended, "mitosis still runs 30 s after its target was killed: \(output)")
        #expect(output.contains("checkpoint of \(target.pid) is not restorable: process \(target.pid) exited while mitosis was working on it"),
                "\(output)")
        // Ended, the tracer lets go: the target's parent (this process) reaps it.
        if !ended { tool.child.kill() }
        target.stop()
    }

    @Test("SIGTERM, SIGINT, SIGHUP and SIGPIPE wait until the registers are back, then end Mitosis")
    func catchableSignalsHeld() async throws {
        var runs: [(target: ScenarioProcess, what: String)] = []
        defer { runs.forEach { $0.target.stop() } }
        // Paused 1 s with borrowed registers (steps 3 and 8), or after the call, before they
        // are restored (5 and 10); one at a time, so that the signal surely comes early in the
        // pause (seeing the pause can take a few hundred ms on a loaded machine).
        for (signal, mode, step) in [(SIGTERM, "sleep", "3:1000"), (SIGINT, "busy", "5:1000"),
                                     (SIGHUP, "futex", "8:1000"), (SIGPIPE, "busy", "10:1000")] {
            let target = try await ScenarioProcess("victim", [mode])
            let what = "\(mode) \(step) signal \(signal)"
            runs.append((target, what))
            let tool = try PausingTool(target: target.pid, pause: step)
            #expect(try await tool.awaitPause() != nil, "\(what)")
            let sent = ContinuousClock.now
            let status = try await tool.end(signal)  // process-directed, as kill(1) and a terminal send it
            // It ended when the registers were back (the pause over), not when the signal came.
            #expect(ContinuousClock.now - sent > .milliseconds(200), "\(what)")
            #expect(status == 128 + signal, "\(what)")
        }
        try await Task.sleep(for: .seconds(2))
        for run in runs { try await Self.expectHealthy(run.target, run.what) }
    }

    @Test("SIGKILL at random moments of a dump leaves the target alive and well")
    func randomKills() async throws {
        var runs: [(ScenarioProcess, String)] = []
        defer { runs.forEach { $0.0.stop() } }
        for (index, mode) in ["sleep", "busy", "read", "futex", "sleep", "busy"].enumerated() {
            let target = try await ScenarioProcess("victim", [mode])
            let tool = try PausingTool(target: target.pid, pause: nil, force: false)
            let delay = Int.random(in: 0...350)
            try await Task.sleep(for: .milliseconds(delay))
            try await tool.end(SIGKILL)
            runs.append((target, "\(mode) run \(index) killed after \(delay) ms"))
        }
        try await Task.sleep(for: .seconds(2))
        for (target, what) in runs { try await Self.expectHealthy(target, what) }
    }

    /// The steps one `mitosis dump` goes through, from the hook's report-only mode.
    static func injectionSteps(restoreState: Bool = false) async throws -> [String] {
        let target = try await ScenarioProcess("victim", ["sleep"])
        defer { target.stop() }
        let images = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-kill-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: images) }
        let run = try await ToolRun(ToolRun.mitosis, ["dump", "\(target.pid)", "--images", images, "--force"] + (restoreState ? [] : ["--no-restore-state"]),
                                    prefix: ["/usr/bin/env", "MITOSIS_TEST_INJECTION_PAUSE=0"])
        #expect(run.status == 0, "\(run.standardError)")
        return run.standardError.split(separator: "\n").filter { $0.contains("injection step") }.map(String.init)
    }

    static func expectHealthy(_ target: ScenarioProcess, _ what: String) async throws {
        #expect(target.isAlive, "\(what): target died")
        guard target.isAlive else { return }
        let free = try await TargetHealth.runsFreely(target.pid)
        // The self-check takes up to 5 s; its wait is off the cooperative pool (ScenarioProcess).
        try await target.send("check")
        let check = try target.fact("check")
        #expect(free, "\(what): target traced or stopped")
        #expect(check == "PASS", "\(what): \(check)")
    }
}

/// `mitosis dump TARGET` started with the injection pause hook (see `InjectionPauseHook`), its
/// stderr (where the hook reports) merged into the stdout pipe.
final class PausingTool: @unchecked Sendable {
    let child: ChildProcess
    let images: String
    var pid: Int32 { child.pid }

    /// `force`: skip the dumpable check, whose own injection (prctl) would add steps; the restore
    /// state (whose injections would too) is never recorded here.
    init(target: Int32, pause: String?, force: Bool = true, restoreState: Bool = false) throws {
        images = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-kill-\(UUID().uuidString)").path
        let environment = pause.map { ["MITOSIS_TEST_INJECTION_PAUSE=\($0)"] } ?? []
        let command = ["/usr/bin/env"] + environment + [ToolRun.mitosis, "dump", String(target), "--images", images]
            + (force ? ["--force"] : []) + (restoreState ? [] : ["--no-restore-state"])
        child = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exec \"$@\" 2>&1", "sh"] + command,
                                 stdin: .null, stdout: .pipe, stderr: .inherit)
    }

    /// The hook's pause line, or nil if Mitosis ended (or 20 s passed) without pausing.
    func awaitPause() async throws -> String? {
        try await Blocking.run("pausing-tool") { [child] in
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                guard let line = child.readLine(timeout: deadline - ContinuousClock.now) else { return nil }
                if line.contains("paused at step") { return line }
            }
            return nil
        }
    }

    /// Whether the tool ended (its output closed) within `timeout`, and what it printed.
    func awaitEnd(timeout: Duration) async throws -> (ended: Bool, output: String) {
        try await Blocking.run("pausing-tool") { [child] in
            let deadline = ContinuousClock.now + timeout
            var lines: [String] = []
            while ContinuousClock.now < deadline {
                guard let line = child.readLine(timeout: deadline - ContinuousClock.now) else {
                    return (ContinuousClock.now < deadline, lines.joined(separator: "\n"))
                }
                lines.append(line)
            }
            return (false, lines.joined(separator: "\n"))
        }
    }

    /// Sends `signal` and waits for the tool to end; returns its exit code (128 + signal).
    @discardableResult
    func end(_ signal: Int32) async throws -> Int32 {
        child.signal(signal)
        let status = try await Blocking.run("pausing-tool") { [child] in child.wait() }
        try? FileManager.default.removeItem(atPath: images)
        return ChildProcess.exitCode(of: status)
    }

    deinit {
        child.kill()
        try? FileManager.default.removeItem(atPath: images)
    }
}
