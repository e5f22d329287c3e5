import CMitosis
import Glibc
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 6: registers, pending signals, and the thaw.
extension Tracer {
    /// Registers each thread's rseq area again, puts back registers (with interrupted system
    /// calls set to restart), extended state and signal mask, and detaches.
    func resumeThreads(_ plan: RestorePlan) throws {
        for state in plan.manifest.threads {
            if let rseq = state.rseq {
                try huskCall("registering rseq of thread \(state.tid)", MITOSIS_SYS_rseq,
                             [rseq.address, UInt64(rseq.size), 0, UInt64(rseq.signature)], in: plan.host(state.tid))
            }
        }
        for state in plan.manifest.threads {
            let tid = plan.host(state.tid)
            do {
                try Ptrace.setRegisters(tid, user_regs_struct(state.registers.resumingInterruptedCall))
                try state.extendedState.bytes.withUnsafeBytes { buffer in
                    try Ptrace.setRegisterSet(tid, kind: MITOSIS_NT_X86_XSTATE, from: buffer)
                }
                try Ptrace.setSignalMask(tid, state.signalMask)
            } catch {
                throw StepFailure(step: "setting the registers of thread \(state.tid)", detail: "\(error)")
            }
        }
        // Images without queued signals (`queueSignals`) name only which signals were pending:
        // each is sent again once, without its siginfo. They wait, blocked or not, for the thaw.
        if plan.record.processState == nil { try resendPendingSignals(plan) }
        thaw()
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

extension user_regs_struct {
    init(_ r: GeneralRegisters) {
        self.init(r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx, r11: r.r11, r10: r.r10,
                  r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi, rdi: r.rdi, orig_rax: r.origRax,
                  rip: r.rip, cs: r.cs, eflags: r.eflags, rsp: r.rsp, ss: r.ss, fs_base: r.fsBase, gs_base: r.gsBase,
                  ds: r.ds, es: r.es, fs: r.fs, gs: r.gs)
    }
}
