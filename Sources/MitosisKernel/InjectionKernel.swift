import CMitosis
import Glibc
import MitosisModel
import SystemPackage

/// A signal as the kernel describes it to a tracer (`siginfo_t`): how a signal held back while
/// Mitosis borrows a thread is kept until it is delivered again.
package typealias SignalInfo = siginfo_t

extension SignalInfo {
    /// The signal's number (`si_signo`).
    package var number: Int32 { si_signo }
}

extension Ptrace {
    /// `PTRACE_O_TRACESYSGOOD`: system-call stops report `SIGTRAP | 0x80`, told apart from a real SIGTRAP.
    package static let traceSystemCallsOption = Int(MITOSIS_PTRACE_O_TRACESYSGOOD)
    /// `PTRACE_O_EXITKILL`: the tracee is killed when the tracer exits (for a half-built husk).
    package static let killOnExitOption = Int(MITOSIS_PTRACE_O_EXITKILL)
    /// `PTRACE_O_TRACECLONE`: threads the tracee creates start traced and stopped.
    package static let traceCloneOption = Int(MITOSIS_PTRACE_O_TRACECLONE)
    /// `PTRACE_O_TRACEFORK`: processes the tracee forks (clone with SIGCHLD) start traced and stopped.
    package static let traceForkOption = 0x2
    /// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters do not see its system calls
    /// (CAP_SYS_ADMIN). Set only while a call Mitosis injected runs: a filter that kills on a
    /// call the process itself never makes (systemd's `SystemCallFilter=`) would kill it for
    /// Mitosis's `mmap` or `getitimer`.
    package static let suspendSeccompOption = 1 << 21
    /// `PTRACE_EVENT_STOP`: the event of a stop that `PTRACE_INTERRUPT` or job control caused.
    package static let stopEvent = MITOSIS_PTRACE_EVENT_STOP

    /// The self-healing stub, `syscall; mov $15, %eax; syscall`: the injected call, then
    /// rt_sigreturn through the frame `sigreturnFrame` lays out (see Docs/injection.md).
    package static let selfHealingStub: [UInt8] = withUnsafeBytes(of: MITOSIS_SELF_HEALING_STUB) { Array($0) }

    /// The restart-keeping stub: the injected call, then the registers put back from the block
    /// `restartBlock` lays out, without rt_sigreturn (which would discard the restart block of
    /// a thread the kernel resumes through restart_syscall). See `MITOSIS_RESTART_KEEPING_STUB`.
    package static let restartKeepingStub: [UInt8] = withUnsafeBytes(of: MITOSIS_RESTART_KEEPING_STUB) { Array($0) }

    /// `restart_syscall(2)`: how the kernel resumes a call that returned -ERESTART_RESTARTBLOCK.
    package static let restartSyscallNumber: UInt64 = 219

    /// The block the restart-keeping stub pops to resume thread `tid` with `registers` and its
    /// current signal mask: the mask, r15…r8, rbp, rdi, rsi, rdx, rcx, rbx, rax, rflags and rip,
    /// ending just below `registers.rsp`'s red zone (where `ret $128` finds rip and lands on
    /// `registers.rsp`). Returns the bytes and their address, where the stub's `%rsp` points.
    package static func restartBlock(_ tid: Int32, resuming registers: GeneralRegisters) throws(Errno) -> (address: UInt64, bytes: [UInt8]) {
        let mask = try signalMask(tid)
        let r = registers
        let words = [mask, r.r15, r.r14, r.r13, r.r12, r.r11, r.r10, r.r9, r.r8, r.rbp,
                     r.rdi, r.rsi, r.rdx, r.rcx, r.rbx, r.rax, r.eflags, r.rip]
        var bytes: [UInt8] = []
        bytes.reserveCapacity(words.count * 8)
        for word in words { withUnsafeBytes(of: word.littleEndian) { bytes += $0 } }
        return (r.rsp &- 128 &- UInt64(bytes.count), bytes)
    }

    /// An rt_sigreturn frame that resumes thread `tid` with `registers` (restarts already folded
    /// in: rt_sigreturn restarts nothing), its current signal mask and its FPU state (XSAVE, else
    /// the legacy FXSAVE area), laid out below `stackTop` as the kernel lays out a signal frame.
    /// Returns the bytes and the address they belong at; rt_sigreturn runs with `%rsp = address + 8`.
    /// The corresponding requests are `PTRACE_GETSIGMASK` and `PTRACE_GETREGSET`.
    package static func sigreturnFrame(_ tid: Int32, resuming registers: GeneralRegisters,
                                       below stackTop: UInt64) throws(Errno) -> (address: UInt64, bytes: [UInt8]) {
        let mask = try signalMask(tid)
        var state = [UInt8](repeating: 0, count: 16384)
        var isXsave: Int32 = 1
        var stateLength = (try? state.withUnsafeMutableBytes { buffer throws(Errno) in
            try getRegisterSet(tid, kind: MITOSIS_NT_X86_XSTATE, into: buffer)
        }) ?? 0
        if stateLength < 512 {  // no XSAVE: the legacy 512-byte FXSAVE area
            isXsave = 0
            do {
                stateLength = try state.withUnsafeMutableBytes { buffer throws(Errno) in
                    try getRegisterSet(tid, kind: MITOSIS_NT_PRFPREG, into: buffer)
                }
            } catch let error as Errno {
                throw error
            } catch {
                throw .ioError
            }
        }
        var bytes = [UInt8](repeating: 0, count: stateLength + 1024)
        var address: UInt64 = 0
        var raw = user_regs_struct(registers)
        let length = mitosis_sigreturn_frame(&bytes, bytes.count, stackTop, &raw, mask, state, stateLength, isXsave, &address)
        guard length > 0 else { throw .noMemory }
        return (address, Array(bytes[..<length]))
    }
}

extension Kernel {
    /// Runs `body` with SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGPIPE sent to this process held:
    /// they take effect when it returns, so that Mitosis cannot be stopped by them while a
    /// target's registers are borrowed. Windows nest.
    package static func withFatalSignalsHeld<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        mitosis_fatal_signals_hold()
        defer { mitosis_fatal_signals_release() }
        return try body()
    }

    /// Blocks the calling thread for `microseconds`: only on a thread of Mitosis's own (a
    /// tracer's), never on Swift's cooperative pool. The corresponding C function is `usleep`.
    package static func sleepThread(microseconds: UInt32) {
        usleep(microseconds)
    }
}

extension Ptrace {
    /// The classic BPF program of the tracee's seccomp filter `index` (0: the oldest), as 8-byte
    /// `struct sock_filter` instructions. The corresponding request is `PTRACE_SECCOMP_GET_FILTER`.
    package static func seccompFilter(_ tid: Int32, index: Int) throws(Errno) -> [UInt64] {
        let count = try Kernel.check { mitosis_ptrace(0x420c, tid, UnsafeMutableRawPointer(bitPattern: index), nil) }
        guard count > 0, count <= 4096 /* BPF_MAXINSNS */ else { throw .invalidArgument }
        var program = [UInt64](repeating: 0, count: Int(count))
        let read = try Kernel.check { program.withUnsafeMutableBytes { mitosis_ptrace(0x420c, tid, UnsafeMutableRawPointer(bitPattern: index), $0.baseAddress) } }
        guard read == count else { throw .ioError }
        return program
    }

    /// The flags filter `index` was installed with (`SECCOMP_FILTER_FLAG_LOG`…).
    /// The corresponding request is `PTRACE_SECCOMP_GET_METADATA`.
    package static func seccompFilterFlags(_ tid: Int32, index: Int) throws(Errno) -> UInt64 {
        var metadata: (filterOffset: UInt64, flags: UInt64) = (UInt64(index), 0)
        _ = try Kernel.check { withUnsafeMutableBytes(of: &metadata) { mitosis_ptrace(0x420d, tid, UnsafeMutableRawPointer(bitPattern: 16), $0.baseAddress) } }
        return metadata.flags
    }
}
