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

    /// Checks that `pid` names a live user-space process other than this one.
    /// - Parameter forTracing: also refuse a process that another tracer holds.
    public static func validate(_ pid: Int32, forTracing: Bool) throws(MitosisError) {
        guard pid > 0 else { throw .invalidPID(String(pid)) }
        if pid == Kernel.currentProcessID() { throw .isSelf(pid) }
        guard let statText = try? Kernel.readFile("/proc/\(pid)/stat"),
              let stat = ProcStat(parsing: String(decoding: statText, as: UTF8.self))
        else { throw .noSuchProcess(pid) }
        // /proc/PID also resolves thread ids that are not thread-group leaders; those are not processes.
        if let statusText = try? Kernel.readFile("/proc/\(pid)/status") {
            let status = ProcStatus(parsing: String(decoding: statusText, as: UTF8.self))
            if let tgid = status["Tgid"].flatMap({ Int32($0) }), tgid != pid { throw .noSuchProcess(pid) }
            if forTracing, status.tracerPID != 0, !isOwnThread(status.tracerPID) {
                throw .alreadyTraced(pid, tracer: status.tracerPID)
            }
        }
        if stat.isKernelThread { throw .kernelThread(pid) }
        if stat.state == "Z" || stat.state == "X" { throw .zombie(pid) }
    }

    private static func isOwnThread(_ tid: Int32) -> Bool {
        (try? Kernel.readFile("/proc/self/task/\(tid)/stat")) != nil
    }
}
