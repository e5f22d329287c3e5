import CMitosis
import Glibc
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
                try huskCall("changing directory to \(cwd)", MITOSIS_SYS_chdir, [try huskText(cwd, area: area)])
            }
            if let text = identity.umask, let mask = UInt64(text, radix: 8) {
                try huskCall("setting the umask", MITOSIS_SYS_umask, [mask])
            }
        }
        let actions = record.signalActions.flatMap { [$0.handler, $0.flags, $0.restorer, $0.mask] }
        try actions.withUnsafeBytes { try huskWrite("passing signal actions", area.scratch + WorkArea.sigactions, $0) }
        for signal in 1...min(64, record.signalActions.count) where signal != SIGKILL && signal != SIGSTOP {
            try huskCall("setting the action of signal \(signal)", MITOSIS_SYS_rt_sigaction,
                         [UInt64(signal), area.scratch + WorkArea.sigactions + UInt64(signal - 1) * 32, 0, 8])
        }

        let exe = try huskCall("opening the executable \(record.executable)", MITOSIS_SYS_openat,
                               [UInt64(bitPattern: -100), try huskText(record.executable, area: area), UInt64(O_RDONLY | O_CLOEXEC), 0])
        try record.auxv.withUnsafeBytes { try huskWrite("passing the auxiliary vector", area.scratch + WorkArea.auxv, $0) }
        let b = record.bounds
        let map = mitosis_prctl_mm_map(
            start_code: b.startCode, end_code: b.endCode, start_data: b.startData, end_data: b.endData,
            start_brk: b.startBrk, brk: b.brk, start_stack: b.startStack, arg_start: b.argStart, arg_end: b.argEnd,
            env_start: b.envStart, env_end: b.envEnd, auxv: area.scratch + WorkArea.auxv,
            auxv_size: UInt32(record.auxv.count * 8), exe_fd: UInt32(exe))
        try huskWrite("passing the mm bounds", area.scratch + WorkArea.mmMap, value: map)
        let set = Result {
            try huskCall("setting the mm bounds, auxv and executable (PR_SET_MM_MAP)", MITOSIS_SYS_prctl,
                         [35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */, area.scratch + WorkArea.mmMap, UInt64(MemoryLayout<mitosis_prctl_mm_map>.size), 0])
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
