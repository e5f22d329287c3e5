import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 6: registers, pending signals, and the thaw.
extension Tracer {
    /// Registers each thread's rseq area again, puts back registers (with interrupted system
    /// calls set to restart), extended state and signal mask, and detaches (unless `thaw` is
    /// false: a tree detaches all its members together, once each is ready).
    func resumeThreads(_ plan: RestorePlan, thaw: Bool = true) throws {
        for state in plan.manifest.threads {
            if let rseq = state.rseq {
                try huskCall("registering rseq of thread \(state.tid)", SyscallNumber.rseq,
                             [rseq.address, UInt64(rseq.size), 0, UInt64(rseq.signature)], in: plan.host(state.tid))
            }
        }
        for state in plan.manifest.threads {
            let tid = plan.host(state.tid)
            do {
                try Ptrace.setRegisters(tid, state.registers.resumingInterruptedCall)
                try state.extendedState.bytes.withUnsafeBytes { buffer in
                    try Ptrace.setRegisterSet(tid, kind: Ptrace.extendedStateKind, from: buffer)
                }
                try Ptrace.setSignalMask(tid, state.signalMask)
            } catch {
                throw StepFailure(step: "setting the registers of thread \(state.tid)", detail: "\(error)")
            }
        }
        // Images without queued signals (`queueSignals`) name only which signals were pending:
        // each is sent again once, without its siginfo. They wait, blocked or not, for the thaw.
        if plan.record.processState == nil { try resendPendingSignals(plan) }
        if thaw { self.thaw() }
    }

    func resendPendingSignals(_ plan: RestorePlan) throws {
        let shared = plan.manifest.threads.first?.sharedPendingSignals ?? 0
        for state in plan.manifest.threads {
            for signal in Self.signals(in: state.pendingSignals) {
                do { try Kernel.threadKill(pid: pid, tid: plan.host(state.tid), signal: signal) } catch {
                    throw StepFailure(step: "sending signal \(signal) pending for thread \(state.tid)", detail: "\(error)")
                }
            }
        }
        for signal in Self.signals(in: shared) {
            do { try Kernel.sendSignal(pid: pid, signal) } catch {
                throw StepFailure(step: "sending signal \(signal) pending for the process", detail: "\(error)")
            }
        }
    }
}

extension Tracer {
    /// The signal numbers of a pending-set bitmap (bit `n - 1` is signal `n`).
    static func signals(in set: UInt64) -> [Int32] {
        (1...64).filter { set & (1 << UInt64($0 - 1)) != 0 }.map { Int32($0) }
    }
}
