import Foundation
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
        let rseq: RseqRegistration?, scheduling: Scheduling
        do throws(Errno) {
            registers = try Ptrace.generalRegisters(tid)
            step = "PTRACE_GETREGSET NT_X86_XSTATE"
            xsave = try Ptrace.extendedStateBytes(tid)
            step = "PTRACE_GETSIGMASK"
            mask = try Ptrace.signalMask(tid)
            step = "reading \(directory)/status"
            status = ProcStatus(parsing: String(decoding: try Kernel.readFile(directory + "/status"), as: UTF8.self))
            step = "reading \(directory)/comm"
            comm = String(decoding: try Kernel.readFile(directory + "/comm"), as: UTF8.self)
            step = "PTRACE_GET_RSEQ_CONFIGURATION"
            rseq = try Ptrace.rseqRegistration(tid)
            step = "sched_getattr"
            scheduling = try Kernel.scheduling(tid)
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
            scheduling: scheduling,
            blockedSystemCall: BlockedSystemCall(registers: registers))
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
            _ = try performSyscall(SyscallNumber.sigaltstack, [0, scratch], in: tid)
            let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: Kernel.signalStackSize, alignment: 8)
            defer { bytes.deallocate() }
            guard try Kernel.readMemory(pid: pid(of: tid), address: scratch, into: bytes) == bytes.count else {
                throw MitosisError.system(operation: "reading the sigaltstack result of thread \(tid)", errno: .ioError)
            }
            return Kernel.signalStack(decoding: UnsafeRawBufferPointer(bytes))
        }
        try injectMunmap(address: scratch, length: page, in: tid)
        return try result.get()
    }

    private func pid(of tid: Int32) -> Int32 { threads.first { $0.tid == tid }?.pid ?? pid }
}
