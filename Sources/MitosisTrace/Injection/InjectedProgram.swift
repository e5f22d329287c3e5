import MitosisKernel
import MitosisModel
import SystemPackage

/// One system call of an injected program: its number and up to six arguments.
public struct InjectedCall: Sendable, Equatable {
    public var number: Int
    public var arguments: [UInt64]

    public init(_ number: Int, _ arguments: [UInt64] = []) {
        precondition(arguments.count <= 6, "a system call takes at most six arguments")
        self.number = number
        self.arguments = arguments
    }
}

/// Several system calls run by a frozen thread with one stop, where `injectSyscall` takes two
/// stops per call (its entry and its exit): each stop waits for the thread, and then for
/// Mitosis, to be scheduled, milliseconds apiece on a loaded machine (Docs/injection.md).
///
/// The program is a loop of machine code placed in a scratch mapping of the target with a
/// table of calls after it: it runs them one after the other, stores each result in the table,
/// and ends by sending its own thread a signal that is neither caught nor pending (SIGURG or
/// SIGWINCH, ignored by default): the signal-delivery-stop tells Mitosis it is done. Only that
/// signal is unblocked meanwhile (`PTRACE_SETSIGMASK`), so no other signal stops it half-way.
///
/// It heals itself like a single injected call: the stack pointer is at the rt_sigreturn frame
/// holding the thread's registers, FPU state and signal mask, and the program ends with
/// rt_sigreturn — or, for a thread the kernel would resume through restart_syscall, at the
/// block the restart-keeping code pops, and the program ends with that code. Should Mitosis
/// vanish while the program runs, the thread finishes it untraced: the signal it sends itself is
/// ignored (not traced, nothing stops it), and its end puts back its registers and mask. (The
/// scratch mapping then stays, as with any scratch mapping of an injected call.)
extension Tracer {
    /// x86-64: `loop: mov (%rbx),%rax; cmp $-1,%rax; je done; mov 8(%rbx),%rdi; mov 16(%rbx),%rsi;
    /// mov 24(%rbx),%rdx; mov 32(%rbx),%r10; mov 40(%rbx),%r8; mov 48(%rbx),%r9; syscall;
    /// mov %rax,56(%rbx); add $64,%rbx; jmp loop; done:` and one of the two ends below.
    static let programLoop: [UInt8] = [
        0x48, 0x8b, 0x03, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x24,
        0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18,
        0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30,
        0x0f, 0x05, 0x48, 0x89, 0x43, 0x38, 0x48, 0x83, 0xc3, 0x40, 0xeb, 0xd3,
    ]
    /// `mov $15,%eax; syscall`: rt_sigreturn through the frame at the stack pointer.
    static let programSigreturnEnd: [UInt8] = [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]
    /// The restart-keeping stub after its `syscall`: pops the block at the stack pointer.
    static let programRestartKeepingEnd = Array(Ptrace.restartKeepingStub.dropFirst(2))
    /// Where `%rip` is just after the program's `syscall` instruction.
    static let programSyscallEnd: UInt64 = 35
    /// Bytes of code before the table, and per table entry (number, six arguments, result).
    static let programCodeArea = 128
    static let programEntrySize = 64

    /// Bytes of executable, writable scratch memory a program of `calls` calls needs.
    public static func programAreaSize(calls: Int) -> Int {
        programCodeArea + (calls + 2) * programEntrySize
    }

    /// Runs `calls` in order in thread `tid` (default: the main thread) as one injected program
    /// at `area` (`programAreaSize` bytes of memory mapped readable, writable and executable in
    /// the target) and returns each call's raw result (a negative value is `-errno`). nil: this
    /// thread cannot run a program (no self-healing stub in the vDSO, or both ending signals
    /// caught or pending): inject the calls one by one instead. The program's calls must not
    /// block. A signal the thread dequeues meanwhile is held back and delivered at thaw.
    public func runProgram(_ calls: [InjectedCall], in tid: Int32? = nil, area: UInt64) throws(MitosisError) -> [Int64]? {
        try runPrograms([(tid, calls, area)])[0]
    }

    /// As `runProgram`, in several threads at once, each program in an `area` of its own: all
    /// are written and started before the first is waited for, so that their stops overlap
    /// rather than follow one another (each waits for its thread, then for Mitosis, to be
    /// scheduled: a freeze asks every thread of the process). Returns each program's results,
    /// nil for a thread that cannot run one. Should one fail, every thread started is still
    /// waited for and given back its registers, signal mask and stack before the error is thrown.
    public func runPrograms(_ programs: [(tid: Int32?, calls: [InjectedCall], area: UInt64)]) throws(MitosisError) -> [[Int64]?] {
        var started: [(index: Int, program: StartedProgram)] = []
        var failure: MitosisError?
        try Kernel.withFatalSignalsHeld { () throws(MitosisError) -> Void in
            for (index, program) in programs.enumerated() {
                do throws(MitosisError) {
                    guard let one = try startProgram(program.calls, in: program.tid, area: program.area) else { continue }
                    started.append((index, one))
                } catch {
                    failure = error
                    break
                }
            }
            // Registers go back only into a stopped thread: every started program is waited for.
            for (_, program) in started {
                do throws(MitosisError) {
                    try awaitProgramEnd(program)
                    InjectionPauseHook.reached(.programEnded, tid: program.thread.tid)
                } catch {
                    failure = failure ?? error
                }
            }
            for (_, program) in started {
                defer {
                    program.frame.restore(pid: program.thread.pid)
                    if program.suspendedSeccomp { try? Ptrace.setOptions(program.thread.tid, seizeOptions) }
                }
                do throws(Errno) {
                    try Ptrace.setRegisters(program.thread.tid, program.saved)
                    try Ptrace.setSignalMask(program.thread.tid, program.mask)
                } catch {
                    failure = failure ?? threadError(error, program.thread, "restoring registers of")
                }
            }
        }
        if let failure { throw failure }
        var results = [[Int64]?](repeating: nil, count: programs.count)
        for (index, program) in started {
            var table = [UInt64](repeating: 0, count: program.calls * Self.programEntrySize / 8)
            do {
                let read = try table.withUnsafeMutableBytes { buffer in try Kernel.readMemory(pid: program.thread.pid, address: program.table, into: buffer) }
                guard read == table.count * 8 else { throw Errno.badAddress }
            } catch {
                throw threadError(error as? Errno ?? .ioError, program.thread, "reading the results of an injected program in")
            }
            results[index] = (0..<program.calls).map { Int64(bitPattern: UInt64(littleEndian: table[$0 * 8 + 7])) }
        }
        return results
    }

    /// A program written into its thread and resumed, with what puts the thread back.
    struct StartedProgram {
        let thread: SeizedThread
        let signal: Int32
        let saved: GeneralRegisters
        let mask: UInt64
        let frame: HealingFrame
        let suspendedSeccomp: Bool
        let area: UInt64
        let table: UInt64
        let calls: Int
    }

    /// Writes the program and its rt_sigreturn frame, points the thread at it with only the
    /// ending signal unblocked, and resumes it; nil when the thread cannot run one. On failure
    /// the thread is left as it was.
    private func startProgram(_ calls: [InjectedCall], in tid: Int32?, area: UInt64) throws(MitosisError) -> StartedProgram? {
        let thread = try lendingThread(tid)
        let site = try injectionSite(for: thread)
        guard site.selfHealing, let signal = Self.programEndSignal(thread) else { return nil }
        let suspended = try suspendSeccomp(of: thread)
        var started = false
        defer { if suspended && !started { try? Ptrace.setOptions(thread.tid, seizeOptions) } }
        let saved: GeneralRegisters, mask: UInt64
        do throws(Errno) {
            saved = try Ptrace.generalRegisters(thread.tid)
            mask = try Ptrace.signalMask(thread.tid)
        } catch {
            throw threadError(error, thread, "reading registers of")
        }
        let table = area + UInt64(Self.programCodeArea)
        var words: [UInt64] = []
        for call in calls {
            words.append(UInt64(bitPattern: Int64(call.number)))
            words += call.arguments + Array(repeating: 0, count: 7 - call.arguments.count)
        }
        // The ending signal to this very thread, then the end of the table.
        words += [UInt64(SyscallNumber.tgkill), UInt64(thread.pid), UInt64(thread.tid), UInt64(signal), 0, 0, 0, 0]
        words += [UInt64.max] + Array(repeating: 0, count: 7)
        let frame = try writeHealingFrame(thread, saved, restartKeeping: true)
        let code = Self.programLoop + (frame.keepsRestart ? Self.programRestartKeepingEnd : Self.programSigreturnEnd)
        var bytes = code + Array(repeating: 0, count: Self.programCodeArea - code.count)
        for word in words { withUnsafeBytes(of: word.littleEndian) { bytes += $0 } }
        do {
            let written = try bytes.withUnsafeBytes { buffer in try Kernel.writeMemory(pid: thread.pid, address: area, from: buffer) }
            guard written == bytes.count else { throw Errno.badAddress }
        } catch {
            frame.restore(pid: thread.pid)
            throw threadError(error as? Errno ?? .ioError, thread, "writing an injected program into")
        }
        var registers = saved
        registers.origRax = UInt64.max  // not inside a system call: nothing is restarted
        registers.rip = area
        registers.rbx = table
        registers.rsp = frame.stackPointer
        do throws(Errno) {
            try Ptrace.setSignalMask(thread.tid, ~(UInt64(1) << UInt64(signal - 1)))
            try Ptrace.setRegisters(thread.tid, registers)
            InjectionPauseHook.reached(.programStarted, tid: thread.tid)
            inSignalDeliveryStop.remove(thread.tid)
            try Ptrace.resume(thread.tid)
        } catch {
            try? Ptrace.setRegisters(thread.tid, saved)
            try? Ptrace.setSignalMask(thread.tid, mask)
            frame.restore(pid: thread.pid)
            throw threadError(error, thread, "setting registers of")
        }
        started = true
        return StartedProgram(thread: thread, signal: signal, saved: saved, mask: mask, frame: frame, suspendedSeccomp: suspended,
                              area: area, table: table, calls: calls.count)
    }

    /// Waits for a started program's ending signal sent by its last call (`%rip` after the
    /// `syscall` with `%rbx` at that entry). Another stop of that signal (sent from outside:
    /// ignored by the process anyway) is passed over; a fault in the program (SIGSEGV, SIGBUS,
    /// SIGILL, SIGFPE, SIGTRAP) ends it with an error; other stops are absorbed as in
    /// `injectSyscall`.
    private func awaitProgramEnd(_ program: StartedProgram) throws(MitosisError) {
        let tid = program.thread.tid
        let rip = program.area + Self.programSyscallEnd
        let entry = program.table + UInt64(program.calls * Self.programEntrySize)
        let faults: Set<Int32> = [4, 5, 7, 8, 11]  // SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV
        do throws(Errno) {
            while true {
                switch try awaitEvent(tid, of: program.thread.pid) {
                case .signalStop(let number) where number == program.signal:
                    let registers = try Ptrace.generalRegisters(tid)
                    if registers.rip == rip && registers.rbx == entry { return }
                case .signalStop(let number) where faults.contains(number):
                    throw Errno.badAddress
                case .signalStop:
                    deferredSignals[tid, default: []].append(try Ptrace.signalInfo(tid))
                case .eventStop(event: Ptrace.stopEvent, let stop):
                    if stop != Linux.SIGTRAP, let index = threads.firstIndex(where: { $0.tid == tid }) {
                        threads[index].groupStopSignal = stop
                    }
                case .eventStop, .syscallStop:
                    break
                case .exited, .killed:
                    throw Errno.noSuchProcess
                }
                try Ptrace.resume(tid)
            }
        } catch {
            throw threadError(error, program.thread, "running an injected program in")
        }
    }

    /// SIGURG or SIGWINCH (both ignored by default), whichever the process does not catch and
    /// the thread has not pending; nil when neither will do.
    static func programEndSignal(_ thread: SeizedThread) -> Int32? {
        guard let process = try? Kernel.readFile("/proc/\(thread.pid)/status"),
              let task = try? Kernel.readFile("/proc/\(thread.pid)/task/\(thread.tid)/status") else { return nil }
        let processStatus = ProcStatus(parsing: String(decoding: process, as: UTF8.self))
        let taskStatus = ProcStatus(parsing: String(decoding: task, as: UTF8.self))
        guard let caught = processStatus["SigCgt"].flatMap({ UInt64($0, radix: 16) }),
              let pending = taskStatus["SigPnd"].flatMap({ UInt64($0, radix: 16) }),
              let shared = taskStatus["ShdPnd"].flatMap({ UInt64($0, radix: 16) }) else { return nil }
        return [Int32(23), 28].first { signal in
            let bit = UInt64(1) << UInt64(signal - 1)
            return (caught | pending | shared) & bit == 0
        }
    }
}
