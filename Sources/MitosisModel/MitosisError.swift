import SystemPackage

/// Why Mitosis refused or failed an operation on a target (the `target` domain of the
/// `MitosisFailure` family). Each case reads as one clear line (`description`) so that the CLI
/// can print it as is.
public enum MitosisError: MitosisFailure, Equatable {
    public static let domain = "target"

    /// The text given as a pid is not a positive process id.
    case invalidPID(String)
    /// No process has this id.
    case noSuchProcess(Int32)
    /// The process exited while Mitosis was working on it (whatever layer noticed: a read of
    /// its `/proc` files, a freeze, a checkpoint, whose image is then left marked incomplete).
    case targetExited(Int32)
    /// The process Mitosis was working on exited, and its pid now names another process.
    case pidReused(Int32)
    /// The process has exited and waits for its parent to reap it: nothing is left to inspect.
    case zombie(Int32)
    /// A kernel thread has no user address space or descriptors to copy.
    case kernelThread(Int32)
    /// Mitosis cannot trace itself.
    case isSelf(Int32)
    /// Another tracer (`tracer` is its thread id) holds the process; Mitosis leaves it alone.
    case alreadyTraced(Int32, tracer: Int32)
    /// The kernel refused access: Mitosis needs root or CAP_SYS_PTRACE (and a permissive Yama scope).
    case permissionDenied(Int32, operation: String)
    /// A thread did not reach a ptrace-stop in time (uninterruptible sleep, or waiting for a
    /// `vfork` child); the freeze was abandoned and the process left running.
    case stopTimedOut(Int32, tid: Int32, after: Duration)
    /// Another `waitpid` in this process collected the ptrace-stop of a thread, so Mitosis cannot
    /// follow it — typically Foundation's `Process`, which reaps the children it launched.
    case stopCollectedElsewhere(Int32, tid: Int32)
    /// The process is not dumpable (`prctl(PR_SET_DUMPABLE, 0)`, or it changed credentials):
    /// it asked to keep its memory out of dumps, so Mitosis does not copy it unless forced.
    case notDumpable(Int32)
    /// The kernel lacks a feature this operation needs.
    case unsupported(feature: String, detail: String)
    /// A system call failed in a way none of the cases above explains.
    case system(operation: String, errno: Errno)
    /// A `LaunchedTarget` exited, or printed something else, before its READY line.
    case targetNotReady(executable: String, output: String)

    /// The process this error says is gone — never there (`noSuchProcess`), exited mid-operation
    /// (`targetExited`) or exited and unreaped (`zombie`) — for callers that end quietly then
    /// (a watch, a sampler, a tree walk); nil for every other failure.
    public var goneProcess: Int32? {
        switch self {
        case .noSuchProcess(let pid), .targetExited(let pid), .zombie(let pid): return pid
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .invalidPID(let text): return "'\(text)' is not a valid process id"
        case .noSuchProcess(let pid): return "no process with pid \(pid)"
        case .targetExited(let pid): return "process \(pid) exited while mitosis was working on it (an image being written is left marked incomplete)"
        case .pidReused(let pid): return "process \(pid) exited; its pid now belongs to another process, which Mitosis leaves alone"
        case .zombie(let pid): return "process \(pid) is a zombie (exited, not yet reaped): nothing to inspect"
        case .kernelThread(let pid): return "process \(pid) is a kernel thread: it has no user space to inspect"
        case .isSelf(let pid): return "process \(pid) is mitosis itself"
        case .alreadyTraced(let pid, let tracer):
            return "process \(pid) is already traced by \(tracer); detach that tracer first"
        case .permissionDenied(let pid, let operation):
            return "permission denied to \(operation) process \(pid): run as root or with CAP_SYS_PTRACE"
        case .stopTimedOut(let pid, let tid, let after):
            return "thread \(tid) of process \(pid) did not stop within \(after) (uninterruptible sleep, or waiting for a vfork child); it was left running"
        case .stopCollectedElsewhere(let pid, let tid):
            return "the stop of thread \(tid) of process \(pid) was collected by another waitpid in this process (Foundation's Process reaps the children it launched): start the target with posix_spawn to freeze it"
        case .notDumpable(let pid):
            return "process \(pid) is not dumpable (it called prctl(PR_SET_DUMPABLE, 0) or changed its credentials): it asked to keep its memory, which may hold secrets, out of dumps; --force copies it anyway"
        case .unsupported(let feature, let detail): return "this kernel does not support \(feature): \(detail)"
        case .system(let operation, let errno): return "\(operation) failed: \(errno)"
        case .targetNotReady(let executable, let output):
            return output.isEmpty ? "\(executable) exited before it was ready"
                : "\(executable) did not start: it printed '\(output)' instead of READY"
        }
    }
}
