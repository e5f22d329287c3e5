import CMitosis
import Glibc
import SystemPackage

/// Typed ptrace(2) requests. Each must be made from the OS thread that seized the tracee
/// (see `DedicatedThreadExecutor`); from any other thread the kernel answers ESRCH.
package enum Ptrace {
    /// Attaches without stopping the tracee. The corresponding request is `PTRACE_SEIZE`.
    package static func seize(_ tid: Int32, options: Int = 0) throws(Errno) {
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_SEIZE, tid, nil, UnsafeMutableRawPointer(bitPattern: options)) }
    }

    /// Asks a seized tracee to stop; the stop is reported through `wait`.
    /// The corresponding request is `PTRACE_INTERRUPT`.
    package static func interrupt(_ tid: Int32) throws(Errno) {
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_INTERRUPT, tid, nil, nil) }
    }

    /// Detaches, delivering `signal` (0 for none) so that a signal seen while stopped is not lost.
    /// The corresponding request is `PTRACE_DETACH`.
    package static func detach(_ tid: Int32, signal: Int32 = 0) throws(Errno) {
        try Kernel.check { mitosis_ptrace(Int32(PTRACE_DETACH.rawValue), tid, nil, UnsafeMutableRawPointer(bitPattern: Int(signal))) }
    }

    /// Resumes a stopped tracee. The corresponding request is `PTRACE_CONT`.
    package static func resume(_ tid: Int32, signal: Int32 = 0) throws(Errno) {
        try Kernel.check { mitosis_ptrace(Int32(PTRACE_CONT.rawValue), tid, nil, UnsafeMutableRawPointer(bitPattern: Int(signal))) }
    }

    /// Keeps a tracee in group-stop while still reporting events.
    /// The corresponding request is `PTRACE_LISTEN`.
    package static func listen(_ tid: Int32) throws(Errno) {
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_LISTEN, tid, nil, nil) }
    }

    /// Resumes a stopped tracee until it enters or leaves a system call, delivering `signal`
    /// (0 for none) first. Unlike single-stepping it leaves no trap flag behind.
    /// The corresponding request is `PTRACE_SYSCALL`.
    package static func resumeToSyscall(_ tid: Int32, signal: Int32 = 0) throws(Errno) {
        try Kernel.check { mitosis_ptrace(Int32(PTRACE_SYSCALL.rawValue), tid, nil, UnsafeMutableRawPointer(bitPattern: Int(signal))) }
    }

    /// The siginfo of the signal that caused the current stop.
    /// The corresponding request is `PTRACE_GETSIGINFO`.
    package static func signalInfo(_ tid: Int32) throws(Errno) -> siginfo_t {
        var info = siginfo_t()
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_GETSIGINFO, tid, nil, &info) }
        return info
    }

    /// Replaces the siginfo of the signal that caused the current signal-delivery-stop, so that
    /// resuming with that signal delivers it as it was sent. The corresponding request is `PTRACE_SETSIGINFO`.
    package static func setSignalInfo(_ tid: Int32, _ info: siginfo_t) throws(Errno) {
        var copy = info
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_SETSIGINFO, tid, nil, &copy) }
    }

    /// Reads a register set (`NT_PRSTATUS`, `NT_PRFPREG`, `NT_X86_XSTATE`…) into `buffer`;
    /// returns how many bytes the kernel filled. The corresponding request is `PTRACE_GETREGSET`.
    package static func getRegisterSet(_ tid: Int32, kind: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_GETREGSET, tid, UnsafeMutableRawPointer(bitPattern: Int(kind)), &vector) }
        return vector.iov_len
    }

    /// The general-purpose registers. The corresponding request is `PTRACE_GETREGS`.
    package static func getRegisters(_ tid: Int32) throws(Errno) -> user_regs_struct {
        var regs = user_regs_struct()
        try Kernel.check { mitosis_ptrace(Int32(PTRACE_GETREGS.rawValue), tid, nil, &regs) }
        return regs
    }

    /// Sets the general-purpose registers. The corresponding request is `PTRACE_SETREGS`.
    package static func setRegisters(_ tid: Int32, _ regs: user_regs_struct) throws(Errno) {
        var copy = regs
        try Kernel.check { mitosis_ptrace(Int32(PTRACE_SETREGS.rawValue), tid, nil, &copy) }
    }

    /// The blocked-signal mask. The corresponding request is `PTRACE_GETSIGMASK`.
    package static func signalMask(_ tid: Int32) throws(Errno) -> UInt64 {
        var mask: UInt64 = 0
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_GETSIGMASK, tid, UnsafeMutableRawPointer(bitPattern: 8), &mask) }
        return mask
    }

    /// Reads one word of tracee memory. The corresponding request is `PTRACE_PEEKDATA`.
    package static func peek(_ tid: Int32, address: UInt64) throws(Errno) -> UInt64 {
        var word: UInt64 = 0
        try Kernel.check { mitosis_ptrace_peek(tid, address, &word) }
        return word
    }

    /// What `waitpid` reported for one tracee.
    package enum Event: Equatable, Sendable {
        /// Stopped by `PTRACE_INTERRUPT` or another ptrace event stop (`event` is PTRACE_EVENT_*).
        case eventStop(event: Int32, signal: Int32)
        /// Stopped because `signal` is about to be delivered; it must be re-injected or it is lost.
        case signalStop(signal: Int32)
        /// Stopped entering or leaving a system call (`resumeToSyscall`; needs
        /// `MITOSIS_PTRACE_O_TRACESYSGOOD`). Entry and exit stops alternate.
        case syscallStop
        /// The thread exited with `code`.
        case exited(code: Int32)
        /// The thread was killed by `signal`.
        case killed(signal: Int32)
    }

    /// Collects the exit of a tracee that died while traced (a SIGKILL during a freeze), so that
    /// the kernel releases it: until its tracer has waited for it, its parent's `wait` does not
    /// see it (a zombie the parent — a shell, systemd — cannot reap while the tracer thread
    /// lives). Gives up after `milliseconds` if the thread is still there: it was not dead.
    /// The corresponding C function is `waitpid` with `__WALL | WNOHANG`, polled.
    package static func releaseDead(_ tid: Int32, milliseconds: Int = 200) {
        for _ in 0..<max(1, milliseconds) {
            do {
                switch try wait(tid, nonBlocking: true) {
                case .exited?, .killed?: return
                default: usleep(1000)
                }
            } catch {
                return  // ECHILD: nothing of it left to collect
            }
        }
    }

    /// Waits for the next state change of one tracee (never `-1`: that would steal other
    /// tracers' events). The corresponding C function is `waitpid` with `__WALL`.
    package static func wait(_ tid: Int32, nonBlocking: Bool = false) throws(Errno) -> Event? {
        var status: Int32 = 0
        let flags = MITOSIS_WALL | (nonBlocking ? WNOHANG : 0)
        let result = try Kernel.check { waitpid(tid, &status, flags) }
        if result == 0 { return nil }
        if mitosis_wifexited(status) != 0 { return .exited(code: mitosis_wexitstatus(status)) }
        if mitosis_wifsignaled(status) != 0 { return .killed(signal: mitosis_wtermsig(status)) }
        let event = mitosis_wptrace_event(status)
        let signal = mitosis_wstopsig(status)
        if event != 0 { return .eventStop(event: event, signal: signal) }
        if signal == SIGTRAP | 0x80 { return .syscallStop }
        return .signalStop(signal: signal)
    }
}
