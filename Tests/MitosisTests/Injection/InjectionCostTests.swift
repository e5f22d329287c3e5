import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisTrace

@Suite("Syscall injection cost")
struct InjectionCostTests {
    @Test("1,000 injected getpid calls return the target's pid; the cost per call is printed")
    func thousandGetpid() async throws {
        let child = try await ScenarioProcess("inject")
        defer { child.stop() }
        let clock = ContinuousClock()
        let elapsed = try await withFrozenProcess(child.pid) { tracer async throws in
            var wrong = 0
            let start = clock.now
            for _ in 0..<1_000 where try await tracer.injectSyscall(SyscallNumber.getpid) != Int64(child.pid) { wrong += 1 }
            #expect(wrong == 0)
            return clock.now - start
        }
        print("injected getpid: \(elapsed / 1_000) per call")
        await #expect(try TargetHealth.runsFreely(child.pid))
    }
}
