import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 5: threads, created with their original tids.
extension Tracer {
    /// Creates every other thread with its tid (`clone3` with `set_tid`, injected in the main
    /// thread) and gives each thread its clear_child_tid, robust list and name.
    /// Inside a new pid namespace `clone3` answers the thread's id there; its id here is the
    /// one new entry of `/proc/PID/task`, recorded in `plan.hostTids`.
    func createThreads(_ plan: inout RestorePlan, area: WorkArea) throws {
        let flags: UInt64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  // VM FS FILES SIGHAND THREAD SYSVSEM
        for state in plan.manifest.threads where state.tid != plan.manifest.pid {
            try huskWrite("passing the tid \(state.tid)", area.scratch + WorkArea.setTid, value: state.tid)
            let args = CloneArguments(flags: flags, setTid: area.scratch + WorkArea.setTid, setTidSize: 1)
            try args.bytes.withUnsafeBytes { try huskWrite("passing clone arguments", area.scratch + WorkArea.cloneArgs, $0) }
            let tid = try huskCall("creating thread \(state.tid)", SyscallNumber.clone3,
                                   [area.scratch + WorkArea.cloneArgs, UInt64(CloneArguments.size)], in: pid)
            guard tid == UInt64(state.tid) else { throw StepFailure(step: "creating thread \(state.tid)", detail: "got tid \(tid)") }
            let known = Set(plan.hostTids.values)
            let listed = (try? Kernel.listDirectory("/proc/\(pid)/task"))?.compactMap { Int32($0) } ?? []
            guard let host = listed.first(where: { !known.contains($0) }), listed.count == known.count + 1 else {
                throw StepFailure(step: "finding thread \(state.tid) in /proc/\(pid)/task", detail: "\(listed.count) threads listed, \(known.count + 1) expected")
            }
            plan.hostTids[state.tid] = host
            do { try adoptClonedThread(host) } catch { throw StepFailure(step: "holding thread \(state.tid)", detail: "\(error)") }
        }
        for record in plan.record.threads {
            try huskCall("setting clear_child_tid of thread \(record.tid)", SyscallNumber.set_tid_address, [record.clearChildTid], in: plan.host(record.tid))
            if record.robustList != 0 {
                try huskCall("setting the robust list of thread \(record.tid)", SyscallNumber.set_robust_list,
                             [record.robustList, record.robustListLength], in: plan.host(record.tid))
            }
        }
        // Only a thread itself may rename itself (comm is not writable by another process).
        for state in plan.manifest.threads {
            try huskCall("naming thread \(state.tid)", SyscallNumber.prctl, [15 /* PR_SET_NAME */, try huskText(state.name, area: area)], in: plan.host(state.tid))
        }
    }

    /// Unmaps the gadget and scratch pages, running the call from a `syscall` instruction in
    /// the restored vDSO. Also clears the husk's parent-death signal.
    func removeWorkArea(_ area: WorkArea, plan: RestorePlan) throws {
        try huskCall("clearing the parent-death signal", SyscallNumber.prctl, [1 /* PR_SET_PDEATHSIG */, 0])
        let vdso = plan.record.vdso.vdso
        var bytes = [UInt8](repeating: 0, count: Int(vdso.length))
        let count = (try? bytes.withUnsafeMutableBytes { buffer throws(Errno) in try Kernel.readMemory(pid: pid, address: vdso.start, into: buffer) }) ?? 0
        guard count >= 2, let index = (0..<count - 1).first(where: { bytes[$0] == 0x0f && bytes[$0 + 1] == 0x05 }) else {
            throw StepFailure(step: "finding a syscall instruction in the restored vDSO", detail: "none found")
        }
        useSyscallInstruction(vdso.start + UInt64(index))
        try huskCall("unmapping the work area", SyscallNumber.munmap, [area.start, UInt64(area.length)])
    }
}
