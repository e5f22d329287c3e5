import Glibc
import Testing
@testable import MitosisTrace

@Suite("Tracer")
struct TracerTests {
    @Test("freezes every thread, then leaves the target running as before")
    func freezeAndThaw() async throws {
        let child = try await ScenarioProcess("threads", ["5"])
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let tids = try await withFrozenProcess(child.pid) { tracer in
            let states = try TargetHealth.threadStates(of: child.pid)
            #expect(states.count == 6)
            #expect(states.values.allSatisfy { $0 == "t" })
            #expect(try TargetHealth.tracer(of: child.pid) != 0)
            return await tracer.threads.map(\.tid)
        }
        #expect(tids.count == 6)
        #expect(Set(tids) == Set(try TargetHealth.threadStates(of: child.pid).keys))
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")  // still answers: it runs
    }

    @Test("a job-control-stopped target stays stopped after thaw")
    func stoppedStaysStopped() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        kill(child.pid, SIGSTOP)
        for _ in 0..<100 where try TargetHealth.threadStates(of: child.pid)[child.pid] != "T" { try await Task.sleep(for: .microseconds(5_000)) }
        let threads = try await withFrozenProcess(child.pid) { await $0.threads }
        #expect(threads.first?.groupStopSignal == SIGSTOP)
        try await Task.sleep(for: .microseconds(20_000))
        #expect(try TargetHealth.threadStates(of: child.pid)[child.pid] == "T")
        #expect(try TargetHealth.tracer(of: child.pid) == 0)
        kill(child.pid, SIGCONT)
    }
}
