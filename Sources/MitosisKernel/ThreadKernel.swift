import CMitosis
import Foundation
import Glibc
import MitosisModel
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

extension Ptrace {
    /// The thread's general registers, `fs_base` and `gs_base` included.
    /// The corresponding request is `PTRACE_GETREGS`.
    package static func generalRegisters(_ tid: Int32) throws(Errno) -> GeneralRegisters {
        GeneralRegisters(try getRegisters(tid))
    }

    /// The thread's XSAVE area (x87, SSE, AVX… state) as the kernel lays it out.
    /// The corresponding request is `PTRACE_GETREGSET` with `NT_X86_XSTATE`.
    package static func extendedStateBytes(_ tid: Int32) throws(Errno) -> Data {
        // Large enough for every XSAVE component defined so far (AMX tiles included).
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 64)
        defer { buffer.deallocate() }
        let count = try getRegisterSet(tid, kind: MITOSIS_NT_X86_XSTATE, into: buffer)
        return Data(buffer[..<count])
    }

    /// The rseq registration, nil when there is none — or when the kernel predates 5.13 and so
    /// rejects the request with EIO: such a kernel has no rseq to record either.
    package static func rseqRegistration(_ tid: Int32) throws(Errno) -> RseqRegistration? {
        let configuration: mitosis_rseq_configuration
        do {
            configuration = try rseqConfiguration(tid)
        } catch .ioError {
            return nil
        }
        guard configuration.rseq_abi_pointer != 0 else { return nil }
        return RseqRegistration(address: configuration.rseq_abi_pointer, size: configuration.rseq_abi_size,
                                signature: configuration.signature, flags: configuration.flags)
    }
}

extension Kernel {
    /// One thread's scheduling parameters. The corresponding system call is `sched_getattr`.
    package static func scheduling(_ tid: Int32) throws(Errno) -> Scheduling {
        let attributes = try schedulingAttributes(tid)
        return Scheduling(
            policy: attributes.sched_policy, resetOnFork: attributes.sched_flags & 1 != 0,
            nice: attributes.sched_nice, priority: attributes.sched_priority,
            runtime: attributes.sched_runtime, deadline: attributes.sched_deadline, period: attributes.sched_period)
    }

    /// Sets the calling thread's nice value, its priority under the normal policy (19: the
    /// lowest, given the CPU when the others leave a core free and preempted as soon as they
    /// wake). Per thread on Linux: the process's other threads keep theirs, and threads it starts
    /// afterwards inherit it. The corresponding system call is
    /// `setpriority(PRIO_PROCESS, gettid(), nice)`.
    package static func setCurrentThreadNice(_ nice: Int32) throws(Errno) {
        try check { setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(currentThreadID()), nice) }
    }

    /// The size of the `stack_t` that `sigaltstack(2)` writes.
    package static let signalStackSize = MemoryLayout<stack_t>.size

    /// Decodes the `stack_t` that `sigaltstack(2)` wrote into `bytes` (`signalStackSize` bytes).
    package static func signalStack(decoding bytes: UnsafeRawBufferPointer) -> SignalStack {
        let stack = bytes.loadUnaligned(as: stack_t.self)
        return SignalStack(address: UInt64(UInt(bitPattern: stack.ss_sp)), size: UInt64(stack.ss_size), flags: stack.ss_flags)
    }
}

extension GeneralRegisters {
    /// The registers of a `user_regs_struct`, as `PTRACE_GETREGS` fills it.
    package init(_ r: user_regs_struct) {
        self.init(r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx, r11: r.r11,
                  r10: r.r10, r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi,
                  rdi: r.rdi, origRax: r.orig_rax, rip: r.rip, cs: r.cs, eflags: r.eflags, rsp: r.rsp,
                  ss: r.ss, fsBase: r.fs_base, gsBase: r.gs_base, ds: r.ds, es: r.es, fs: r.fs, gs: r.gs)
    }
}

extension user_regs_struct {
    /// The C layout of `r`, for `PTRACE_SETREGS` and signal frames.
    package init(_ r: GeneralRegisters) {
        self.init(r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx, r11: r.r11, r10: r.r10,
                  r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi, rdi: r.rdi, orig_rax: r.origRax,
                  rip: r.rip, cs: r.cs, eflags: r.eflags, rsp: r.rsp, ss: r.ss, fs_base: r.fsBase, gs_base: r.gsBase,
                  ds: r.ds, es: r.es, fs: r.fs, gs: r.gs)
    }
}
