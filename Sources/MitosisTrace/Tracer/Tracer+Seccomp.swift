import MitosisKernel
import MitosisModel
import SystemPackage

extension Tracer {
    /// The seccomp state of frozen thread `tid` of process `pid`; nil when it has none. Filters
    /// are read with `PTRACE_SECCOMP_GET_FILTER` (CAP_SYS_ADMIN), whose index 0 is the
    /// oldest, in the order they were installed. Runs on the tracer's thread: ptrace requests from any other fail.
    package func seccomp(of tid: Int32, pid: Int32) throws(Errno) -> SeccompState? {
        let status = ProcStatus(parsing: String(decoding: try Kernel.readFile("/proc/\(pid)/task/\(tid)/status"), as: UTF8.self))
        guard let mode = status["Seccomp"].flatMap({ Int32($0) }), mode != 0 else { return nil }
        guard mode == 2 else { return SeccompState(mode: mode, filters: []) }
        var filters: [SeccompFilter] = []
        while true {
            let program: [UInt64]
            do { program = try Ptrace.seccompFilter(tid, index: filters.count) } catch .noSuchFileOrDirectory { break }
            filters.append(SeccompFilter(flags: try Ptrace.seccompFilterFlags(tid, index: filters.count), program: program))
        }
        return SeccompState(mode: mode, filters: filters)
    }
}
