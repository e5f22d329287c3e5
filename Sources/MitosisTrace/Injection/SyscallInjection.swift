import CMitosis
import Glibc
import SystemPackage
import MitosisKernel
import MitosisModel

/// Running system calls inside a frozen target ("parasite" calls, as CRIU's compel does them).
///
/// One frozen thread lends its registers: they are saved, replaced by the call's number and
/// arguments with `rip` on a `syscall` instruction of the target (in its vDSO), the thread is
/// single-stepped over that instruction, and the registers are put back exactly — on every path.
/// `orig_rax = -1` keeps the kernel from restarting the call the thread was blocked in while the
/// injected one runs; restoring the saved registers re-arms that restart for after the thaw.
///
/// The injected call must not block. Only the lending thread runs; the others stay frozen.
extension Tracer {
    /// Runs system call `number` with up to six `arguments` in thread `tid` (default: the main
    /// thread of the frozen process) and returns the raw result: a negative value is `-errno`.
    /// A signal the thread dequeues meanwhile is held back and delivered at thaw.
    public func injectSyscall(_ number: Int, _ arguments: [UInt64] = [], in tid: Int32? = nil) throws(MitosisError) -> Int64 {
        precondition(arguments.count <= 6, "a system call takes at most six arguments")
        let thread = try lendingThread(tid)
        let site = try syscallInstruction(for: thread)
        let saved: user_regs_struct
        do { saved = try Ptrace.getRegisters(thread.tid) } catch {
            throw threadError(error, thread, "reading registers of")
        }
        var registers = saved
        let values = arguments + Array(repeating: 0, count: 6 - arguments.count)
        registers.orig_rax = UInt64.max  // -1: not inside a system call, so nothing is restarted
        registers.rax = UInt64(bitPattern: Int64(number))
        registers.rdi = values[0]
        registers.rsi = values[1]
        registers.rdx = values[2]
        registers.r10 = values[3]
        registers.r8 = values[4]
        registers.r9 = values[5]
        registers.rip = site
        let result: Int64
        do throws(MitosisError) {
            do { try Ptrace.setRegisters(thread.tid, registers) } catch {
                throw threadError(error, thread, "setting registers of")
            }
            result = try stepOverSyscall(thread, at: site)
        } catch {
            try? Ptrace.setRegisters(thread.tid, saved)
            throw error
        }
        do { try Ptrace.setRegisters(thread.tid, saved) } catch {
            throw threadError(error, thread, "restoring registers of")
        }
        return result
    }

    /// Runs a system call in the target like `injectSyscall`, and throws the `Errno` it failed
    /// with (or a `MitosisError` when the injection itself failed).
    public func performSyscall(_ number: Int, _ arguments: [UInt64] = [], in tid: Int32? = nil) throws -> UInt64 {
        let result = try injectSyscall(number, arguments, in: tid)
        if result < 0 && result >= -4095 { throw Errno(rawValue: Int32(-result)) }
        return UInt64(bitPattern: result)
    }

    /// Maps memory in the target and returns its address. The corresponding system call is `mmap`.
    public func injectMmap(length: Int, protection: Int32 = PROT_READ | PROT_WRITE,
                           flags: Int32 = MAP_PRIVATE | MAP_ANONYMOUS, fd: Int32 = -1, offset: Int = 0,
                           address: UInt64 = 0, in tid: Int32? = nil) throws -> UInt64 {
        try performSyscall(SyscallNumber.mmap, [address, UInt64(length), UInt64(protection), UInt64(flags),
                                               UInt64(bitPattern: Int64(fd)), UInt64(offset)], in: tid)
    }

    /// Unmaps memory in the target. The corresponding system call is `munmap`.
    public func injectMunmap(address: UInt64, length: Int, in tid: Int32? = nil) throws {
        _ = try performSyscall(SyscallNumber.munmap, [address, UInt64(length)], in: tid)
    }

    /// Runs a system call that returns a new file descriptor in the target, brings that open file
    /// over into this process (`pidfd_getfd`), and closes it in the target again: for kernel
    /// objects only the target itself can create, bound to its address space or credentials.
    public func openInTarget(_ number: Int, _ arguments: [UInt64] = [], in tid: Int32? = nil) throws -> FileDescriptor {
        let thread = try lendingThread(tid)
        let targetFD = try performSyscall(number, arguments, in: thread.tid)
        let local: FileDescriptor
        do {
            let pidfd = try Kernel.pidfdOpen(thread.pid)
            defer { try? pidfd.close() }
            local = try Kernel.pidfdGetfd(pidfd, Int32(truncatingIfNeeded: targetFD))
        } catch {
            _ = try? injectSyscall(SyscallNumber.close, [targetFD], in: thread.tid)
            throw error
        }
        do {
            _ = try performSyscall(SyscallNumber.close, [targetFD], in: thread.tid)
        } catch {
            try? local.close()
            throw error
        }
        return local
    }

    /// A userfaultfd created by the target (a userfaultfd serves the address space that created
    /// it), handed to this process; the target keeps no descriptor. `flags` are those of
    /// `userfaultfd(2)`: `O_CLOEXEC`, `O_NONBLOCK`, `UFFD_USER_MODE_ONLY` (needed for a target
    /// without CAP_SYS_PTRACE when `vm.unprivileged_userfaultfd` is 0).
    /// The corresponding system call is `userfaultfd`.
    public func createTargetUserfaultfd(flags: Int32 = O_CLOEXEC | O_NONBLOCK, in tid: Int32? = nil) throws -> FileDescriptor {
        try openInTarget(SyscallNumber.userfaultfd, [UInt64(UInt32(bitPattern: flags))], in: tid)
    }

    // MARK: Mechanics

    /// The frozen thread that runs the call: `tid`, or the main thread of the traced process.
    private func lendingThread(_ tid: Int32?) throws(MitosisError) -> SeizedThread {
        let wanted = tid ?? pid
        if let thread = threads.first(where: { $0.tid == wanted }) { return thread }
        // The main thread may be gone (it called pthread_exit): any thread of the process serves.
        if tid == nil, let thread = threads.first(where: { $0.pid == pid }) { return thread }
        try requireSeized(wanted)
        throw .noSuchProcess(wanted)
    }

    /// Single-steps `thread` over the `syscall` instruction at `site` and returns `rax`. Stops
    /// that come first are absorbed: a job-control stop or interrupt is stepped through, and a
    /// signal about to be delivered is held back for thaw (stepping on without it).
    private func stepOverSyscall(_ thread: SeizedThread, at site: UInt64) throws(MitosisError) -> Int64 {
        let tid = thread.tid
        do throws(Errno) {
            inSignalDeliveryStop.remove(tid)
            try Ptrace.singleStep(tid)
            while true {
                guard let event = try Ptrace.wait(tid) else { continue }
                switch event {
                case .signalStop(let signal):
                    inSignalDeliveryStop.insert(tid)
                    if signal == SIGTRAP {
                        let registers = try Ptrace.getRegisters(tid)
                        // The trap that ends the step: the call ran and returned.
                        if registers.rip == site + 2 { return Int64(bitPattern: registers.rax) }
                    }
                    deferredSignals[tid, default: []].append(try Ptrace.signalInfo(tid))
                case .eventStop(event: MITOSIS_PTRACE_EVENT_STOP, let signal):
                    inSignalDeliveryStop.remove(tid)
                    if signal != SIGTRAP, let index = threads.firstIndex(where: { $0.tid == tid }) {
                        threads[index].groupStopSignal = signal
                    }
                case .eventStop:
                    inSignalDeliveryStop.remove(tid)
                case .exited, .killed:
                    throw Errno.noSuchProcess
                }
                try Ptrace.singleStep(tid)
            }
        } catch {
            throw threadError(error, thread, "single-stepping")
        }
    }

    /// Finds a `syscall` instruction (`0f 05`) the target can execute: in its vDSO, or else the
    /// one `thread` is stopped just after (a thread blocked in a system call).
    private func syscallInstruction(for thread: SeizedThread) throws(MitosisError) -> UInt64 {
        if let known = syscallInstructions[thread.pid] { return known }
        var found: UInt64?
        if let (start, end) = Self.vdsoRange(of: thread.pid) {
            var bytes = [UInt8](repeating: 0, count: Int(end - start))
            let count = (try? bytes.withUnsafeMutableBytes { buffer throws(Errno) in
                try Kernel.readMemory(pid: thread.pid, address: start, into: buffer)
            }) ?? 0
            if count >= 2, let index = (0..<count - 1).first(where: { bytes[$0] == 0x0f && bytes[$0 + 1] == 0x05 }) {
                found = start + UInt64(index)
            }
        }
        if found == nil, let registers = try? Ptrace.getRegisters(thread.tid), registers.rip >= 2,
           let word = try? Ptrace.peek(thread.tid, address: registers.rip - 2), word & 0xffff == 0x050f {
            found = registers.rip - 2
        }
        guard let found else {
            throw .unsupported(feature: "syscall injection",
                               detail: "process \(thread.pid) has no vDSO and thread \(thread.tid) is not stopped in a system call")
        }
        syscallInstructions[thread.pid] = found
        return found
    }

    /// The address range of the `[vdso]` mapping in `/proc/PID/maps`.
    private static func vdsoRange(of pid: Int32) -> (UInt64, UInt64)? {
        guard let maps = try? Kernel.readFile("/proc/\(pid)/maps") else { return nil }
        for line in String(decoding: maps, as: UTF8.self).split(separator: "\n") where line.hasSuffix("[vdso]") {
            let range = line.prefix { $0 != " " }.split(separator: "-")
            if range.count == 2, let start = UInt64(range[0], radix: 16), let end = UInt64(range[1], radix: 16), start < end {
                return (start, end)
            }
        }
        return nil
    }

    /// Drops a thread that died while frozen (only SIGKILL can do that).
    private func forget(_ tid: Int32) {
        threads.removeAll { $0.tid == tid }
        deferredSignals[tid] = nil
        inSignalDeliveryStop.remove(tid)
    }

    private func threadError(_ error: Errno, _ thread: SeizedThread, _ what: String) -> MitosisError {
        if error == .noSuchProcess {
            forget(thread.tid)
            return .noSuchProcess(thread.tid)
        }
        return .system(operation: "\(what) thread \(thread.tid)", errno: error)
    }
}
