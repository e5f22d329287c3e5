import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 5, continued: what each thread holds beside registers and kernel pointers.
extension Tracer {
    /// Per thread: the alternate signal stack and timer slack (only the thread itself can set
    /// them: injected), then its scheduling policy, priority and nice value (`sched_setattr`
    /// from outside, after the injected calls: a real-time policy must not starve them). The
    /// husk's main thread inherited Mitosis's signal stack, so a thread recorded without one
    /// gets `SS_DISABLE`.
    func restoreThreadState(_ plan: RestorePlan, area: WorkArea) throws {
        for thread in plan.record.processState?.threads ?? [] {
            let recorded = thread.alternateSignalStack
            let stack: [UInt64] = recorded.flags & altStackDisabled != 0
                ? [0, UInt64(altStackDisabled), 0]
                : [recorded.address, UInt64(UInt32(bitPattern: recorded.flags)), recorded.size]
            try stack.withUnsafeBytes { try huskWrite("passing the signal stack of thread \(thread.tid)", area.scratch + WorkArea.altStack, $0) }
            try huskCall("setting the signal stack of thread \(thread.tid)", SyscallNumber.sigaltstack,
                         [area.scratch + WorkArea.altStack, 0], in: plan.host(thread.tid))
            try huskCall("setting the timer slack of thread \(thread.tid)", SyscallNumber.prctl,
                         [PrctlOption.setTimerSlack, thread.timerSlack, 0, 0, 0], in: plan.host(thread.tid))
        }
        for thread in plan.manifest.threads {
            let s = thread.scheduling
            do { try Kernel.setScheduling(plan.host(thread.tid), s) } catch {
                throw StepFailure(step: "setting the scheduling of thread \(thread.tid) (\(s.policyName), nice \(s.nice), priority \(s.priority))",
                                  detail: "\(error)")
            }
        }
    }
}
