import Foundation

/// Everything the kernel holds for one thread that a checkpoint must record: registers, FPU and
/// vector state, signal state, restartable-sequence registration, scheduling, and the system
/// call it was blocked in. Read with `Tracer.threadState(_:)` while the thread is frozen.
public struct ThreadState: Equatable, Sendable, Codable {
    public var tid: Int32
    /// The thread's name (`/proc/PID/task/TID/comm`).
    public var name: String
    public var registers: GeneralRegisters
    /// The XSAVE area: x87, SSE, AVX… registers (`NT_X86_XSTATE`).
    public var extendedState: ExtendedState
    /// Blocked signals: bit `n - 1` is signal `n`.
    public var signalMask: UInt64
    /// Signals pending for this thread alone (`SigPnd`).
    public var pendingSignals: UInt64
    /// Signals pending for the whole process (`ShdPnd`), the same in every thread.
    public var sharedPendingSignals: UInt64
    /// The alternate signal stack, when one was read. The kernel exposes it neither through ptrace
    /// nor through /proc: only the thread itself can ask (`sigaltstack(2)`), so this is nil
    /// unless it was obtained by running that call inside the target.
    public var alternateSignalStack: SignalStack?
    /// The thread's `rseq(2)` registration; nil when it registered none.
    public var rseq: RseqRegistration?
    public var scheduling: Scheduling
    /// The system call the thread was blocked in when it was frozen; nil when it was running
    /// user code (or had just finished a call).
    public var blockedSystemCall: BlockedSystemCall?

    public init(tid: Int32, name: String, registers: GeneralRegisters, extendedState: ExtendedState,
                signalMask: UInt64, pendingSignals: UInt64, sharedPendingSignals: UInt64,
                alternateSignalStack: SignalStack?, rseq: RseqRegistration?, scheduling: Scheduling,
                blockedSystemCall: BlockedSystemCall?) {
        self.tid = tid
        self.name = name
        self.registers = registers
        self.extendedState = extendedState
        self.signalMask = signalMask
        self.pendingSignals = pendingSignals
        self.sharedPendingSignals = sharedPendingSignals
        self.alternateSignalStack = alternateSignalStack
        self.rseq = rseq
        self.scheduling = scheduling
        self.blockedSystemCall = blockedSystemCall
    }
}

/// The x86-64 general-purpose registers as ptrace reports them (`struct user_regs_struct`),
/// including the fs and gs segment bases (thread-local storage).
public struct GeneralRegisters: Equatable, Sendable, Codable {
    public var r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8: UInt64
    public var rax, rcx, rdx, rsi, rdi: UInt64
    /// The system call number at entry; `UInt64.max` (-1) outside a system call.
    public var origRax: UInt64
    public var rip, cs, eflags, rsp, ss: UInt64
    public var fsBase, gsBase: UInt64
    public var ds, es, fs, gs: UInt64

    public init(r15: UInt64, r14: UInt64, r13: UInt64, r12: UInt64, rbp: UInt64, rbx: UInt64,
                r11: UInt64, r10: UInt64, r9: UInt64, r8: UInt64, rax: UInt64, rcx: UInt64,
                rdx: UInt64, rsi: UInt64, rdi: UInt64, origRax: UInt64, rip: UInt64, cs: UInt64,
                eflags: UInt64, rsp: UInt64, ss: UInt64, fsBase: UInt64, gsBase: UInt64,
                ds: UInt64, es: UInt64, fs: UInt64, gs: UInt64) {
        self.r15 = r15; self.r14 = r14; self.r13 = r13; self.r12 = r12; self.rbp = rbp; self.rbx = rbx
        self.r11 = r11; self.r10 = r10; self.r9 = r9; self.r8 = r8; self.rax = rax; self.rcx = rcx
        self.rdx = rdx; self.rsi = rsi; self.rdi = rdi; self.origRax = origRax; self.rip = rip
        self.cs = cs; self.eflags = eflags; self.rsp = rsp; self.ss = ss; self.fsBase = fsBase
        self.gsBase = gsBase; self.ds = ds; self.es = es; self.fs = fs; self.gs = gs
    }
}

/// The thread's XSAVE area as the kernel hands it out (`PTRACE_GETREGSET NT_X86_XSTATE`), kept
/// verbatim (base64 in JSON) with the header fields decoded.
public struct ExtendedState: Equatable, Sendable, Codable {
    /// The raw area: the 512-byte legacy FXSAVE region, the 64-byte XSAVE header, then the
    /// extended components in the standard (non-compacted) layout.
    public var bytes: Data
    /// `bytes.count`.
    public var size: Int
    /// XSTATE_BV: the components holding non-initial state (bit 0 x87, 1 SSE, 2 AVX, 5–7 AVX-512…).
    public var features: UInt64
    /// XCR0, which the kernel stores in the area's software-usable bytes 464…471: the components
    /// this CPU and kernel enable.
    public var enabledFeatures: UInt64
    /// The SSE control and status register.
    public var mxcsr: UInt32
    /// The x87 control word.
    public var fpuControlWord: UInt16

    /// Decodes the header fields of an XSAVE area; nil when it is too short to be one.
    public init?(bytes: Data) {
        guard bytes.count >= 576 else { return nil }
        func load<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
            bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
        }
        self.bytes = bytes
        size = bytes.count
        fpuControlWord = load(0, as: UInt16.self)
        mxcsr = load(24, as: UInt32.self)
        // Bytes 464…471, free for software in XSAVE, carry XCR0 in the ptrace and core-dump layout.
        enabledFeatures = load(464, as: UInt64.self)
        features = load(512, as: UInt64.self)
    }
}

/// An alternate signal stack (`stack_t`).
public struct SignalStack: Equatable, Sendable, Codable {
    public var address: UInt64
    public var size: UInt64
    /// `SS_ONSTACK` (1), `SS_DISABLE` (2), `SS_AUTODISARM` (1 << 31).
    public var flags: Int32

    public init(address: UInt64, size: UInt64, flags: Int32) {
        self.address = address
        self.size = size
        self.flags = flags
    }
}

/// A thread's restartable-sequences area as registered with `rseq(2)`.
public struct RseqRegistration: Equatable, Sendable, Codable {
    /// The address of the thread's `struct rseq`.
    public var address: UInt64
    public var size: UInt32
    /// The signature that must precede every abort handler.
    public var signature: UInt32
    public var flags: UInt32

    public init(address: UInt64, size: UInt32, signature: UInt32, flags: UInt32) {
        self.address = address
        self.size = size
        self.signature = signature
        self.flags = flags
    }
}

/// A thread's scheduling attributes (`sched_getattr(2)`).
public struct Scheduling: Equatable, Sendable, Codable {
    /// The policy number: 0 SCHED_OTHER, 1 SCHED_FIFO, 2 SCHED_RR, 3 SCHED_BATCH, 5 SCHED_IDLE,
    /// 6 SCHED_DEADLINE, 7 SCHED_EXT.
    public var policy: UInt32
    /// The policy's name (`SCHED_OTHER`…), or `SCHED_<number>` for a policy this code does not know.
    public var policyName: String
    /// SCHED_FLAG_RESET_ON_FORK: children start with the default policy.
    public var resetOnFork: Bool
    public var nice: Int32
    /// The real-time priority (1–99 for FIFO and RR, 0 otherwise).
    public var priority: UInt32
    /// SCHED_DEADLINE parameters in nanoseconds. Since Linux 6.6 `runtime` of a SCHED_OTHER or
    /// SCHED_BATCH thread is its time slice; the others are 0 outside SCHED_DEADLINE.
    public var runtime, deadline, period: UInt64

    public init(policy: UInt32, resetOnFork: Bool, nice: Int32, priority: UInt32,
                runtime: UInt64, deadline: UInt64, period: UInt64) {
        self.policy = policy
        let names = [0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH",
                     5: "SCHED_IDLE", 6: "SCHED_DEADLINE", 7: "SCHED_EXT"]
        policyName = names[Int(policy)] ?? "SCHED_\(policy)"
        self.resetOnFork = resetOnFork
        self.nice = nice
        self.priority = priority
        self.runtime = runtime
        self.deadline = deadline
        self.period = period
    }
}

/// A system call a thread was blocked in when it was stopped. The stop interrupted it; the
/// kernel restarts it (or returns EINTR, for calls that are never restarted) when the thread runs on.
public struct BlockedSystemCall: Equatable, Sendable, Codable {
    /// The x86-64 system call number (`orig_rax`).
    public var number: Int64
    /// rdi, rsi, rdx, r10, r8, r9.
    public var arguments: [UInt64]
    /// The value in rax while stopped: `-ERESTARTSYS` (-512), `-ERESTARTNOINTR` (-513),
    /// `-ERESTARTNOHAND` (-514), `-ERESTART_RESTARTBLOCK` (-516) or `-EINTR` (-4).
    public var interruption: Int64
    /// Whether the kernel restarts the call when the thread resumes (every code above but -EINTR).
    public var restarts: Bool { interruption != -4 }

    public init(number: Int64, arguments: [UInt64], interruption: Int64) {
        self.number = number
        self.arguments = arguments
        self.interruption = interruption
    }

    /// The call the registers of a stopped thread show it blocked in, if any: a call number in
    /// `orig_rax` together with an interruption code in `rax`.
    public init?(registers r: GeneralRegisters) {
        let number = Int64(bitPattern: r.origRax), result = Int64(bitPattern: r.rax)
        guard number >= 0, [-4, -512, -513, -514, -516].contains(result) else { return nil }
        self.init(number: number, arguments: [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9], interruption: result)
    }
}
