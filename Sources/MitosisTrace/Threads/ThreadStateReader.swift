import CMitosis
import Foundation
import Glibc
import SystemPackage
import MitosisKernel
import MitosisModel

extension Tracer {
    /// Reads the full kernel state of one frozen thread (see `ThreadState`). Only reads: the
    /// thread is not resumed, and nothing in it changes — unless `includingSignalStack`, which
    /// runs `sigaltstack(2)` inside the thread (see `alternateSignalStack(_:)`).
    public func threadState(_ tid: Int32, includingSignalStack: Bool = false) throws -> ThreadState {
        var state = try readThreadState(tid)
        if includingSignalStack { state.alternateSignalStack = try alternateSignalStack(tid) }
        return state
    }

    /// `threadState(_:includingSignalStack:)` of every frozen thread of `pid` (default: the
    /// frozen process), ascending tid.
    public func threadStates(of pid: Int32? = nil, includingSignalStacks: Bool = false) throws -> [ThreadState] {
        try threads(of: pid ?? self.pid).map { try threadState($0, includingSignalStack: includingSignalStacks) }
    }

    /// Everything of `ThreadState` that can be read without running anything in the thread.
    private func readThreadState(_ tid: Int32) throws(MitosisError) -> ThreadState {
        try requireSeized(tid)
        let pid = pid(of: tid)
        let directory = "/proc/\(pid)/task/\(tid)"
        var step = "PTRACE_GETREGS"
        let registers: GeneralRegisters, xsave: Data, mask: UInt64, status: ProcStatus, comm: String
        let rseq: RseqRegistration?, attributes: mitosis_sched_attr
        do throws(Errno) {
            registers = GeneralRegisters(try Ptrace.getRegisters(tid))
            step = "PTRACE_GETREGSET NT_X86_XSTATE"
            // Large enough for every XSAVE component defined so far (AMX tiles included).
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 64)
            defer { buffer.deallocate() }
            let count = try Ptrace.getRegisterSet(tid, kind: MITOSIS_NT_X86_XSTATE, into: buffer)
            xsave = Data(buffer[..<count])
            step = "PTRACE_GETSIGMASK"
            mask = try Ptrace.signalMask(tid)
            step = "reading \(directory)/status"
            status = ProcStatus(parsing: String(decoding: try Kernel.readFile(directory + "/status"), as: UTF8.self))
            step = "reading \(directory)/comm"
            comm = String(decoding: try Kernel.readFile(directory + "/comm"), as: UTF8.self)
            step = "PTRACE_GET_RSEQ_CONFIGURATION"
            rseq = try Self.rseqRegistration(tid)
            step = "sched_getattr"
            attributes = try Kernel.schedulingAttributes(tid)
        } catch {
            throw .system(operation: "\(step) of thread \(tid)", errno: error)
        }
        guard let extendedState = ExtendedState(bytes: xsave) else {
            throw .unsupported(feature: "XSAVE", detail: "thread \(tid) has a \(xsave.count)-byte extended state")
        }
        return ThreadState(
            tid: tid,
            name: comm.trimmingCharacters(in: "\n"),
            registers: registers,
            extendedState: extendedState,
            signalMask: mask,
            pendingSignals: status["SigPnd"].flatMap { UInt64($0, radix: 16) } ?? 0,
            sharedPendingSignals: status["ShdPnd"].flatMap { UInt64($0, radix: 16) } ?? 0,
            alternateSignalStack: nil,
            rseq: rseq,
            scheduling: Scheduling(
                policy: attributes.sched_policy, resetOnFork: attributes.sched_flags & 1 != 0,
                nice: attributes.sched_nice, priority: attributes.sched_priority,
                runtime: attributes.sched_runtime, deadline: attributes.sched_deadline, period: attributes.sched_period),
            blockedSystemCall: BlockedSystemCall(registers: registers))
    }

    /// The rseq registration, nil when there is none — or when the kernel predates 5.13 and so
    /// rejects the request with EIO: such a kernel has no rseq to record either.
    private static func rseqRegistration(_ tid: Int32) throws(Errno) -> RseqRegistration? {
        let configuration: mitosis_rseq_configuration
        do {
            configuration = try Ptrace.rseqConfiguration(tid)
        } catch .ioError {
            return nil
        }
        guard configuration.rseq_abi_pointer != 0 else { return nil }
        return RseqRegistration(address: configuration.rseq_abi_pointer, size: configuration.rseq_abi_size,
                                signature: configuration.signature, flags: configuration.flags)
    }

    /// The alternate signal stack of a frozen thread. No ptrace request or /proc file exposes it,
    /// so the thread itself is made to run `sigaltstack(NULL, &old)` into a page mapped in the
    /// target for the purpose and unmapped again: the thread's registers, memory and mappings
    /// end as they were. The corresponding system call is `sigaltstack`.
    public func alternateSignalStack(_ tid: Int32) throws -> SignalStack {
        try requireSeized(tid)
        let page = Int(PagemapFile.pageSize)
        let scratch = try injectMmap(length: page, in: tid)
        let result = Result { () throws -> SignalStack in
            _ = try performSyscall(MITOSIS_SYS_sigaltstack, [0, scratch], in: tid)
            var stack = stack_t()
            let count = try withUnsafeMutableBytes(of: &stack) { buffer in
                try Kernel.readMemory(pid: pid(of: tid), address: scratch, into: buffer)
            }
            guard count == MemoryLayout<stack_t>.size else {
                throw MitosisError.system(operation: "reading the sigaltstack result of thread \(tid)", errno: .ioError)
            }
            return SignalStack(address: UInt64(UInt(bitPattern: stack.ss_sp)), size: UInt64(stack.ss_size), flags: stack.ss_flags)
        }
        try injectMunmap(address: scratch, length: page, in: tid)
        return try result.get()
    }

    private func pid(of tid: Int32) -> Int32 { threads.first { $0.tid == tid }?.pid ?? pid }
}

extension GeneralRegisters {
    package init(_ r: user_regs_struct) {
        self.init(r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx, r11: r.r11,
                  r10: r.r10, r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi,
                  rdi: r.rdi, origRax: r.orig_rax, rip: r.rip, cs: r.cs, eflags: r.eflags, rsp: r.rsp,
                  ss: r.ss, fsBase: r.fs_base, gsBase: r.gs_base, ds: r.ds, es: r.es, fs: r.fs, gs: r.gs)
    }
}
