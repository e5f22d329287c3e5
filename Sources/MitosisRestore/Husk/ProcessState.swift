import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 3: process-wide state.
extension Tracer {
    /// Working directory, umask, every signal disposition, and the mm bounds, auxv and
    /// executable (`PR_SET_MM_MAP`, which also makes the kernel name `[heap]` and `[stack]`).
    func restoreProcessState(_ plan: RestorePlan, area: WorkArea) throws {
        let record = plan.record
        if let identity = plan.manifest.process?.identity {
            if let cwd = identity.cwd {
                try huskCall("changing directory to \(cwd)", SyscallNumber.chdir, [try huskText(cwd, area: area)])
            }
            if let text = identity.umask, let mask = UInt64(text, radix: 8) {
                try huskCall("setting the umask", SyscallNumber.umask, [mask])
            }
        }
        let actions = record.signalActions.flatMap { [$0.handler, $0.flags, $0.restorer, $0.mask] }
        try actions.withUnsafeBytes { try huskWrite("passing signal actions", area.scratch + WorkArea.sigactions, $0) }
        // The husk reset every disposition to SIG_DFL with nothing else set (`husk_main`):
        // only the others are injected.
        for signal in 1...min(64, record.signalActions.count) where signal != Linux.SIGKILL && signal != Linux.SIGSTOP {
            let action = record.signalActions[signal - 1]
            if action.handler == 0 && action.flags == 0 && action.restorer == 0 && action.mask == 0 { continue }
            try huskCall("setting the action of signal \(signal)", SyscallNumber.rt_sigaction,
                         [UInt64(signal), area.scratch + WorkArea.sigactions + UInt64(signal - 1) * 32, 0, 8])
        }

        let exe = try huskCall("opening the executable \(record.executable)", SyscallNumber.openat,
                               [UInt64(bitPattern: -100), try huskText(record.executable, area: area), UInt64(Linux.O_RDONLY | Linux.O_CLOEXEC), 0])
        try record.auxv.withUnsafeBytes { try huskWrite("passing the auxiliary vector", area.scratch + WorkArea.auxv, $0) }
        let b = record.bounds
        let map = MmMap(
            startCode: b.startCode, endCode: b.endCode, startData: b.startData, endData: b.endData,
            startBrk: b.startBrk, brk: b.brk, startStack: b.startStack, argStart: b.argStart, argEnd: b.argEnd,
            envStart: b.envStart, envEnd: b.envEnd, auxv: area.scratch + WorkArea.auxv,
            auxvSize: UInt32(record.auxv.count * 8), exeFd: UInt32(exe))
        try map.bytes.withUnsafeBytes { try huskWrite("passing the mm bounds", area.scratch + WorkArea.mmMap, $0) }
        let set = Result {
            try huskCall("setting the mm bounds, auxv and executable (PR_SET_MM_MAP)", SyscallNumber.prctl,
                         [35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */, area.scratch + WorkArea.mmMap, UInt64(MmMap.size), 0])
        }
        try huskCall("closing the executable", SyscallNumber.close, [exe])
        _ = try set.get()
    }

    /// `/proc/PID/limits` names, in `RLIMIT_*` order.
    static let limitNames = ["Max cpu time", "Max file size", "Max data size", "Max stack size", "Max core file size",
                             "Max resident set", "Max processes", "Max open files", "Max locked memory", "Max address space",
                             "Max file locks", "Max pending signals", "Max msgqueue size", "Max nice priority",
                             "Max realtime priority", "Max realtime timeout"]

    /// Resource limits, set from outside (`prlimit64`), after the descriptors: a lower
    /// open-files limit must not stop their restore.
    func restoreLimits(_ plan: RestorePlan) throws {
        for limit in plan.manifest.process?.limits ?? [] {
            guard let resource = Self.limitNames.firstIndex(of: limit.name) else { continue }
            do {
                try Kernel.setResourceLimit(pid: pid, resource: Int32(resource), soft: limit.soft, hard: limit.hard)
            } catch {
                throw StepFailure(step: "setting the limit '\(limit.name)'", detail: "\(error)")
            }
        }
    }
}
