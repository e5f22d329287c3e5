import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 5, last: the signals that were queued at the freeze.
extension Tracer {
    /// Queues every recorded signal again with its siginfo, in order: `rt_tgsigqueueinfo` for a
    /// thread's own (injected into that thread), `rt_sigqueueinfo` for the process's (into the
    /// main thread): the kernel accepts `SI_USER`, `SI_TKILL` and kernel codes only from the
    /// thread they are queued for. The ids passed are the image's: the calls run inside the husk. The husk's threads block every signal until their masks are put back, so
    /// nothing is delivered before the thaw.
    func queueSignals(_ plan: RestorePlan, area: WorkArea) throws {
        for queued in plan.record.processState?.queuedSignals ?? [] {
            guard queued.info.count == 16, (1...64).contains(queued.signal) else {
                throw StepFailure(step: "queueing signal \(queued.signal)", detail: "the image holds no valid siginfo for it")
            }
            try queued.info.withUnsafeBytes { try huskWrite("passing the siginfo of signal \(queued.signal)", area.scratch + WorkArea.signalInfo, $0) }
            if let tid = queued.tid {
                try huskCall("queueing signal \(queued.signal) for thread \(tid)", SyscallNumber.rt_tgsigqueueinfo,
                             [UInt64(plan.manifest.pid), UInt64(tid), UInt64(queued.signal), area.scratch + WorkArea.signalInfo], in: plan.host(tid))
            } else {
                try huskCall("queueing signal \(queued.signal) for the process", SyscallNumber.rt_sigqueueinfo,
                             [UInt64(plan.manifest.pid), UInt64(queued.signal), area.scratch + WorkArea.signalInfo])
            }
        }
    }
}
