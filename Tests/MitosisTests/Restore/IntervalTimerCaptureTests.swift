import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel

/// ITIMER_REAL in the restore record after it fired into a process that has not taken its
/// SIGALRM: a periodic ITIMER_REAL is re-armed only when the signal is taken, so meanwhile
/// getitimer reports it as {interval, 0}, which must not be read as disarmed. A timer that fires
/// while its process is frozen is in this state until the thaw (injected programs run with
/// every signal blocked; the acceptance program lost its timer so under load), and so is one
/// whose process blocks SIGALRM, as here, deterministically. (The restore of it is
/// `ScenarioRestoreTests`' `alarm` case.)
@Suite struct IntervalTimerCaptureTests {
    @Test("an ITIMER_REAL whose SIGALRM waits is recorded armed and due, its SIGALRM queued; it keeps firing after the thaw")
    func firedAndPending() async throws {
        let child = try ScenarioProcess("alarm", ["blocked"])
        defer { child.stop() }
        let pid = child.pid
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        // The 20 ms timer fires within 60 ms; its signal then waits in the process's queue.
        try await Task.sleep(for: .milliseconds(60))
        let status = ProcStatus(parsing: String(decoding: try Kernel.readFile("/proc/\(pid)/status"), as: UTF8.self))
        #expect((status["ShdPnd"].flatMap { UInt64($0, radix: 16) } ?? 0) & (1 << UInt64(SIGALRM - 1)) != 0, "SIGALRM pending")
        let manifest = try await withCheckpointSession(pid: pid) { session in
            try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/image")).manifest
        }
        let state = try #require(manifest.restore?.processState)
        #expect(state.intervalTimers == [RestoreRecord.IntervalTimer(which: 0, value: .init(intervalNanoseconds: 20_000_000, valueNanoseconds: 1000))])
        #expect(state.queuedSignals.contains { $0.signal == SIGALRM }, "\(state.queuedSignals.map(\.signal))")
        try child.send("check")
        #expect(try child.fact("check") == "PASS")
    }
}
