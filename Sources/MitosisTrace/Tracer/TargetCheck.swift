import MitosisKernel
import MitosisModel

/// Turns user input into a pid that Mitosis may work on, or the typed reason it may not.
/// Every operation checks its target here first, so bad input never reaches ptrace.
public enum TargetCheck {
    /// Parses a pid given as text (`"1234"`): positive decimal only.
    public static func parsePID(_ text: String) throws(MitosisError) -> Int32 {
        guard let pid = Int32(text), pid > 0 else { throw .invalidPID(text) }
        return pid
    }

    /// Checks that `pid` names a live user-space process other than this one (see `TargetProcess`).
    /// - Parameter forTracing: also refuse a process that another tracer holds.
    public static func validate(_ pid: Int32, forTracing: Bool) throws(MitosisError) {
        _ = try TargetProcess(pid: pid, forTracing: forTracing)
    }

    /// Throws `.notDumpable` unless the kernel lets `target` be dumped (`PR_GET_DUMPABLE` is 1).
    /// A non-dumpable process's /proc/PID files (not the directory) belong to root instead of
    /// its effective user; for a process running as root, where that shows nothing, the process
    /// is briefly frozen and asked (an injected `prctl(PR_GET_DUMPABLE)`).
    public static func requireDumpable(_ target: TargetProcess) async throws {
        let pid = target.pid
        guard let user = ProcStatus(parsing: try target.text("status")).credentials("Uid")?.effective else {
            throw MitosisError.noSuchProcess(pid)
        }
        let dumpable: Bool
        if user != 0 {
            do {
                dumpable = try Kernel.statusAt(target.process.directory, "status").owner == user
            } catch {
                throw target.failure(error, reading: "status")
            }
        } else {
            let answer = try await withFrozenProcess(pid) { tracer in
                try await tracer.injectSyscall(SyscallNumber.prctl, [3 /* PR_GET_DUMPABLE */])
            }
            dumpable = answer == 1
        }
        if !dumpable { throw MitosisError.notDumpable(pid) }
    }
}
