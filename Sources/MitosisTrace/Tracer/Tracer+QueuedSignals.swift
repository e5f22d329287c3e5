import MitosisKernel
import SystemPackage

extension Tracer {
    /// The signals queued for frozen thread `tid` (with `shared`, for its whole process), each
    /// as its `siginfo_t` in 16 words, oldest first, left queued. For a thread, the signals
    /// this tracer caught on their way to it (and holds until the thaw) come first. Runs on the
    /// tracer's thread: ptrace requests from any other fail.
    package func queuedSignals(of tid: Int32, shared: Bool) throws(Errno) -> [[UInt64]] {
        let held = shared ? [] : (deferredSignals[tid] ?? []).map { Kernel.signalInfoWords($0) }
        return held + (try Ptrace.queuedSignals(tid, shared: shared))
    }
}
