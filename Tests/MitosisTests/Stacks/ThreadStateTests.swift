import Foundation
import Glibc
import Testing
@testable import MitosisModel
@testable import MitosisTrace

@Suite("ThreadState")
struct ThreadStateTests {
    @Test("reads registers, signal state, rseq, scheduling and the blocked call of each thread")
    func knownThreads() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let alpha = Int32(try child.intFact("alpha")), beta = Int32(try child.intFact("beta"))
        let gamma = Int32(try child.intFact("gamma"))
        let states = try await withFrozenProcess(child.pid) { tracer in
            try await [tracer.threadState(alpha), tracer.threadState(beta), tracer.threadState(gamma)]
        }
        let (a, b, g) = (states[0], states[1], states[2])
        #expect(a.tid == alpha && a.name == "alpha" && b.name == "beta" && g.name == "gamma")
        // SIGUSR1 (10) and SIGUSR2 (12) blocked; SIGUSR1 sent to the thread and pending.
        #expect(a.signalMask == 1 << 9 | 1 << 11)
        #expect(a.pendingSignals == 1 << 9)
        #expect(a.sharedPendingSignals == 0)
        #expect(b.signalMask == 0 && b.pendingSignals == 0)
        // pause (34) → -ERESTARTNOHAND; read (0) of fd 3 → -ERESTARTSYS; clock_nanosleep (230) →
        // -ERESTART_RESTARTBLOCK.
        #expect(a.blockedSystemCall == BlockedSystemCall(number: 34, arguments: Array(a.blockedSystemCall?.arguments ?? []), interruption: -514))
        #expect(b.blockedSystemCall?.number == 0 && b.blockedSystemCall?.arguments[0] == 3 && b.blockedSystemCall?.arguments[2] == 1)
        #expect(b.blockedSystemCall?.interruption == -512)
        #expect(g.blockedSystemCall?.number == 230 && g.blockedSystemCall?.interruption == -516)
        #expect(g.blockedSystemCall?.restarts == true)
        // Thread pointer and rseq area: glibc registers one per thread at tp + __rseq_offset.
        #expect(a.registers.fsBase == UInt64(try child.intFact("tp_alpha")))
        #expect(a.rseq?.address == UInt64(try child.intFact("rseq_alpha")))
        #expect(a.rseq?.signature == 0x5305_3053)
        #expect(a.scheduling.policy == 0 && !a.scheduling.resetOnFork && a.scheduling.nice == 5 && a.scheduling.priority == 0)
        #expect(a.scheduling.policyName == "SCHED_OTHER")
        #expect(b.scheduling.nice == 0)
        // The XSAVE area: default control words, x87 and SSE enabled, the size the CPU defines.
        #expect(a.extendedState.mxcsr == 0x1f80)
        #expect(a.extendedState.fpuControlWord == 0x37f)
        #expect(a.extendedState.enabledFeatures & 3 == 3)
        #expect(a.extendedState.size == a.extendedState.bytes.count && a.extendedState.size >= 576)
        #expect(a.alternateSignalStack == nil)
        // Round trip through the JSON form manifests use.
        let json = try JSONOutput.encoder().encode(a)
        #expect(try JSONOutput.decoder().decode(ThreadState.self, from: json) == a)
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")
    }

    @Test("reads the alternate signal stack by running sigaltstack in the thread, leaving no trace")
    func alternateSignalStack() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let alpha = Int32(try child.intFact("alpha")), beta = Int32(try child.intFact("beta"))
        let (a, b, plain) = try await withFrozenProcess(child.pid) { tracer in
            (try await tracer.threadState(alpha, includingSignalStack: true),
             try await tracer.threadState(beta, includingSignalStack: true),
             try await tracer.threadState(alpha))
        }
        #expect(a.alternateSignalStack == SignalStack(address: UInt64(try child.intFact("altstack")),
                                                      size: UInt64(try child.intFact("altstack_size")), flags: 0))
        #expect(b.alternateSignalStack == SignalStack(address: 0, size: 0, flags: 2))  // SS_DISABLE
        // Everything else is what the read without injection sees: registers restored exactly.
        var withoutStack = a
        withoutStack.alternateSignalStack = nil
        #expect(withoutStack == plain)
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")
    }

    @Test("threads not frozen by the tracer are refused")
    func refusesUnfrozen() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        await #expect(throws: MitosisError.self) {
            try await withFrozenProcess(child.pid) { tracer in try await tracer.threadState(getpid()) }
        }
    }
}
