import CMitosis
import Glibc
import SystemPackage

extension Ptrace {
    /// The thread's restartable-sequences registration: the address, size and signature it gave
    /// `rseq(2)` (all zero when it registered none). Linux 5.13 and later.
    /// The corresponding request is `PTRACE_GET_RSEQ_CONFIGURATION`.
    package static func rseqConfiguration(_ tid: Int32) throws(Errno) -> mitosis_rseq_configuration {
        var configuration = mitosis_rseq_configuration()
        let size = MemoryLayout<mitosis_rseq_configuration>.size
        try Kernel.check {
            mitosis_ptrace(MITOSIS_PTRACE_GET_RSEQ_CONFIGURATION, tid, UnsafeMutableRawPointer(bitPattern: size), &configuration)
        }
        return configuration
    }
}

extension Kernel {
    /// The scheduling policy, flags, nice value, real-time priority and deadline parameters of
    /// one thread. The corresponding system call is `sched_getattr`.
    package static func schedulingAttributes(_ tid: Int32) throws(Errno) -> mitosis_sched_attr {
        var attributes = mitosis_sched_attr()
        try check { mitosis_sched_getattr(tid, &attributes) }
        return attributes
    }
}
