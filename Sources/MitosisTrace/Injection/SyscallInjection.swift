import SystemPackage
import MitosisKernel
import MitosisModel

/// Running system calls inside a frozen target ("parasite" calls, as CRIU's compel does them).
///
/// One frozen thread lends its registers: they are saved, replaced by the call's number and
/// arguments, the thread is resumed with `PTRACE_SYSCALL` to the call's exit stop, and the
/// registers are put back exactly — on every path. Nothing single-steps, so no trap flag can
/// outlive Mitosis.
///
/// The borrowed registers heal themselves should Mitosis vanish while the thread holds them
/// (SIGKILL, crash): `rip` points at a stub placed in the padding of the target's vDSO,
/// `syscall; mov $15, %eax; syscall`, and the stack pointer at an rt_sigreturn frame written
/// below the thread's red zone that holds its original registers, FPU state and signal mask.
/// A thread left untraced runs the call and then rt_sigreturn, and resumes where it was. A
/// thread the kernel would resume through restart_syscall (its call returned
/// -ERESTART_RESTARTBLOCK) gets the restart-keeping stub instead, which pops its registers and
/// mask without rt_sigreturn: rt_sigreturn discards the restart block, and the interrupted
/// nanosleep or timed futex wait would fail with EINTR.
/// Catchable fatal signals sent to Mitosis meanwhile wait until the registers are back.
/// See Docs/injection.md for what can still go wrong.
///
/// The injected call must not block. Only the lending thread runs; the others stay frozen.
extension Tracer {
    /// Runs system call `number` with up to six `arguments` in thread `tid` (default: the main
    /// thread of the frozen process) and returns the raw result: a negative value is `-errno`.
    /// A signal the thread dequeues meanwhile is held back and delivered at thaw.
    public func injectSyscall(_ number: Int, _ arguments: [UInt64] = [], in tid: Int32? = nil) throws(MitosisError) -> Int64 {
        precondition(arguments.count <= 6, "a system call takes at most six arguments")
        let thread = try lendingThread(tid)
        let site = try injectionSite(for: thread)
        let suspended = try suspendSeccomp(of: thread)
        defer { if suspended { try? Ptrace.setOptions(thread.tid, seizeOptions) } }
        let saved: GeneralRegisters
        do { saved = try Ptrace.generalRegisters(thread.tid) } catch {
            throw threadError(error, thread, "reading registers of")
        }
        var registers = saved
        let values = arguments + Array(repeating: 0, count: 6 - arguments.count)
        registers.origRax = UInt64.max  // -1: not inside a system call, so nothing is restarted
        registers.rax = UInt64(bitPattern: Int64(number))
        registers.rdi = values[0]
        registers.rsi = values[1]
        registers.rdx = values[2]
        registers.r10 = values[3]
        registers.r8 = values[4]
        registers.r9 = values[5]
        registers.rip = site.address
        var frame: HealingFrame?
        if site.selfHealing {
            frame = try writeHealingFrame(thread, saved, restartKeeping: site.restartKeeping != nil)
            registers.rsp = frame!.stackPointer
            if frame!.keepsRestart, let stub = site.restartKeeping { registers.rip = stub }
        }
        defer { frame?.restore(pid: thread.pid) }
        let result = try Kernel.withFatalSignalsHeld { () throws(MitosisError) -> Int64 in
            let result: Int64
            do throws(MitosisError) {
                do throws(Errno) { try Ptrace.setRegisters(thread.tid, registers) } catch {
                    throw threadError(error, thread, "setting registers of")
                }
                InjectionPauseHook.reached(.registersBorrowed, tid: thread.tid)
                result = try runToSyscallExit(thread)
            } catch {
                try? Ptrace.setRegisters(thread.tid, saved)
                throw error
            }
            do throws(Errno) { try Ptrace.setRegisters(thread.tid, saved) } catch {
                throw threadError(error, thread, "restoring registers of")
            }
            return result
        }
        InjectionPauseHook.reached(.registersRestored, tid: thread.tid)
        return result
    }

    /// Suspends the seccomp filters of `thread` for one injected call, if it has any; returns
    /// whether it did. A filter sees the calls Mitosis injects as the process's own, and one
    /// that kills on a call the process never makes (systemd's `SystemCallFilter=`) would kill
    /// the process for Mitosis's `getitimer`. Suspending needs CAP_SYS_ADMIN: without it the
    /// call is not made at all.
    func suspendSeccomp(of thread: SeizedThread) throws(MitosisError) -> Bool {
        guard seizeOptions & Ptrace.suspendSeccompOption == 0 else { return false }
        let filtered: Bool
        if let known = seccompFiltered[thread.tid] {
            filtered = known
        } else {
            let status = try? Kernel.readFile("/proc/\(thread.pid)/task/\(thread.tid)/status")
            filtered = status.map { ProcStatus(parsing: String(decoding: $0, as: UTF8.self))["Seccomp"] != "0" } ?? true
            seccompFiltered[thread.tid] = filtered
        }
        guard filtered else { return false }
        do throws(Errno) { try Ptrace.setOptions(thread.tid, seizeOptions | Ptrace.suspendSeccompOption) } catch {
            throw .system(operation: "suspending the seccomp filters of thread \(thread.tid) of process \(thread.pid) for an injected call (needs CAP_SYS_ADMIN)", errno: error)
        }
        return true
    }

    /// Runs a system call in the target like `injectSyscall`, and throws the `Errno` it failed
    /// with (or a `MitosisError` when the injection itself failed).
    public func performSyscall(_ number: Int, _ arguments: [UInt64] = [], in tid: Int32? = nil) throws -> UInt64 {
        let result = try injectSyscall(number, arguments, in: tid)
        if result < 0 && result >= -4095 { throw Errno(rawValue: Int32(-result)) }
        return UInt64(bitPattern: result)
    }

    /// Maps memory in the target and returns its address. The corresponding system call is `mmap`.
    public func injectMmap(length: Int, protection: Int32 = SyscallFlags.readWriteProtection,
                           flags: Int32 = SyscallFlags.privateAnonymousMapping, fd: Int32 = -1, offset: Int = 0,
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
            let pidfd = try Kernel.pidfdOpen(descriptorsOf: thread.pid)
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
    public func createTargetUserfaultfd(flags: Int32 = SyscallFlags.closeOnExecNonBlocking, in tid: Int32? = nil) throws -> FileDescriptor {
        try openInTarget(SyscallNumber.userfaultfd, [UInt64(UInt32(bitPattern: flags))], in: tid)
    }

    // MARK: Mechanics

    /// The frozen thread that runs the call: `tid`, or the main thread of the traced process.
    func lendingThread(_ tid: Int32?) throws(MitosisError) -> SeizedThread {
        let wanted = tid ?? pid
        if let thread = threads.first(where: { $0.tid == wanted }) { return thread }
        // The main thread may be gone (it called pthread_exit): any thread of the process serves.
        if tid == nil, let thread = threads.first(where: { $0.pid == pid }) { return thread }
        try requireSeized(wanted)
        throw .noSuchProcess(wanted)
    }

    /// Resumes `thread` (its registers borrowed) through the entry and exit stops of the injected
    /// call and returns `rax` at the exit stop, where the registers are put back: a thread left
    /// there untraced resumes through the kernel's ordinary restart of the call it was in.
    /// Stops that come first are absorbed: a job-control stop or interrupt is resumed through,
    /// and a signal about to be delivered is held back for thaw.
    private func runToSyscallExit(_ thread: SeizedThread) throws(MitosisError) -> Int64 {
        let tid = thread.tid
        do throws(Errno) {
            inSignalDeliveryStop.remove(tid)
            try Ptrace.resumeToSyscall(tid)
            var entered = false
            while true {
                switch try awaitEvent(tid, of: thread.pid) {
                case .syscallStop where !entered:
                    entered = true
                    InjectionPauseHook.reached(.syscallEntry, tid: tid)
                case .syscallStop:
                    let rax = try Ptrace.getRegisters(tid).rax
                    InjectionPauseHook.reached(.syscallExit, tid: tid)
                    return Int64(bitPattern: rax)
                case .signalStop:
                    deferredSignals[tid, default: []].append(try Ptrace.signalInfo(tid))
                case .eventStop(event: Ptrace.stopEvent, let signal):
                    if signal != Linux.SIGTRAP, let index = threads.firstIndex(where: { $0.tid == tid }) {
                        threads[index].groupStopSignal = signal
                    }
                case .eventStop:
                    break
                case .exited, .killed:
                    throw Errno.noSuchProcess
                }
                try Ptrace.resumeToSyscall(tid)
            }
        } catch {
            throw threadError(error, thread, "running an injected system call in")
        }
    }

    /// The original registers on `thread`'s stack, below its red zone where a signal frame
    /// would go, with the bytes they cover kept to be put back: as the block the restart-keeping
    /// stub pops when the thread would resume through restart_syscall and `restartKeeping` code
    /// is there to run, else as an rt_sigreturn frame.
    func writeHealingFrame(_ thread: SeizedThread, _ saved: GeneralRegisters, restartKeeping: Bool) throws(MitosisError) -> HealingFrame {
        do {
            var resumed = saved
            let keepsRestart = restartKeeping && Self.resumesThroughRestartBlock(saved)
            let address: UInt64, bytes: [UInt8]
            if keepsRestart {
                // As the kernel resumes it: restart_syscall, from the same `syscall` instruction.
                resumed.rax = Ptrace.restartSyscallNumber
                resumed.rip &-= 2
                (address, bytes) = try Ptrace.restartBlock(thread.tid, resuming: resumed)
            } else {
                Self.foldRestart(&resumed)
                (address, bytes) = try Ptrace.sigreturnFrame(thread.tid, resuming: resumed, below: saved.rsp &- 128)
            }
            var original = [UInt8](repeating: 0, count: bytes.count)
            let read = try original.withUnsafeMutableBytes { buffer in
                try Kernel.readMemory(pid: thread.pid, address: address, into: buffer)
            }
            let written = try bytes.withUnsafeBytes { buffer in
                try Kernel.writeMemory(pid: thread.pid, address: address, from: buffer)
            }
            guard read == bytes.count, written == bytes.count else { throw Errno.badAddress }
            InjectionPauseHook.reached(.frameWritten, tid: thread.tid)
            return HealingFrame(address: address, original: original, keepsRestart: keepsRestart)
        } catch {
            throw threadError(error as? Errno ?? .ioError, thread, "writing the rt_sigreturn frame on the stack of")
        }
    }

    /// Makes `registers` say where the thread resumes once it is no longer stopped in the
    /// kernel: rt_sigreturn restarts no system call, so an interrupted call the kernel would
    /// restart is made to run again from its `syscall` instruction with its own arguments (a
    /// timed wait that the kernel would continue through its restart block waits again, for its
    /// full time or, with a `rem` argument, the time that was left: a timeout is a lower bound).
    static func foldRestart(_ registers: inout GeneralRegisters) {
        guard Int64(bitPattern: registers.origRax) >= 0 else { return }
        switch Int64(bitPattern: registers.rax) {
        case -512, -513, -514, -516:  // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK
            registers.rax = registers.origRax
            registers.rip &-= 2
        default:
            break
        }
        registers.origRax = UInt64.max
    }

    /// Whether the kernel resumes a thread stopped with `registers` through restart_syscall,
    /// which needs the restart block the kernel keeps for it: the call it is in returned
    /// -ERESTART_RESTARTBLOCK.
    static func resumesThroughRestartBlock(_ registers: GeneralRegisters) -> Bool {
        Int64(bitPattern: registers.origRax) >= 0 && Int64(bitPattern: registers.rax) == -516
    }

    /// Where `thread`'s process runs injected calls: the self-healing stub, placed once per
    /// process in its vDSO; without a vDSO with room for it, a bare `syscall` instruction (the
    /// one the thread is stopped just after), and no self-healing.
    func injectionSite(for thread: SeizedThread) throws(MitosisError) -> InjectionSite {
        if let known = injectionSites[thread.pid] { return known }
        var site: InjectionSite?
        if let tail = Self.vdsoTail(of: thread.pid) {
            if let leftover = tail.leftover {
                // Left by a Mitosis killed mid-injection: the same bytes, taken over as they are
                // and left there at thaw (a thread frozen inside them may still run them).
                site = Self.stubSite(leftover, endingAt: tail.end, placed: false)
                InjectionPauseHook.reached(.stubPlaced, tid: thread.tid)
            } else if let layout = Self.stubLayouts.first(where: { tail.free >= $0.count }),
                      let memory = try? ProcessMemoryFile(pid: thread.pid, writable: true) {
                defer { memory.close() }
                let slot = tail.end - UInt64(layout.count)
                var check = [UInt8](repeating: 0, count: layout.count)
                if (try? memory.write(at: slot, layout)) != nil,
                   (try? check.withUnsafeMutableBytes { buffer throws(Errno) in try memory.read(at: slot, into: buffer) }) == layout.count,
                   check == layout {
                    site = Self.stubSite(layout, endingAt: tail.end, placed: true)
                    InjectionPauseHook.reached(.stubPlaced, tid: thread.tid)
                }
            }
        }
        if site == nil, let address = Self.vdsoSyscallInstruction(of: thread.pid) {
            site = InjectionSite(address: address, selfHealing: false, stubLength: 0)
        }
        if site == nil, let registers = try? Ptrace.generalRegisters(thread.tid), registers.rip >= 2,
           let word = try? Ptrace.peek(thread.tid, address: registers.rip - 2), word & 0xffff == 0x050f {
            site = InjectionSite(address: registers.rip - 2, selfHealing: false, stubLength: 0)
        }
        guard let site else {
            throw .unsupported(feature: "syscall injection",
                               detail: "process \(thread.pid) has no vDSO with room for a stub and thread \(thread.tid) is not stopped in a system call")
        }
        injectionSites[thread.pid] = site
        return site
    }

    /// Puts back the zeros the stubs replaced in the vDSOs (the pages stay private copies).
    func removeInjectionStubs() {
        for (pid, site) in injectionSites where site.stubLength > 0 {
            guard let memory = try? ProcessMemoryFile(pid: pid, writable: true) else { continue }
            try? memory.write(at: site.address, [UInt8](repeating: 0, count: site.stubLength))
            memory.close()
        }
        injectionSites.removeAll()
    }

    /// The stubs as they end the vDSO, each layout a multiple of 16 bytes: both (the
    /// restart-keeping one 16 bytes on) where the padding has room, else the self-healing one.
    static let stubLayouts: [[UInt8]] = {
        func padded(_ bytes: [UInt8]) -> [UInt8] { bytes + [UInt8](repeating: 0, count: (16 - bytes.count % 16) % 16) }
        return [padded(padded(Ptrace.selfHealingStub) + Ptrace.restartKeepingStub), padded(Ptrace.selfHealingStub)]
    }()

    /// Where the stubs of `layout` ending the vDSO at `end` run; `placed`: written by this
    /// tracer (zeroed at thaw), not found there.
    private static func stubSite(_ layout: [UInt8], endingAt end: UInt64, placed: Bool) -> InjectionSite {
        let slot = end - UInt64(layout.count)
        return InjectionSite(address: slot, selfHealing: true, restartKeeping: layout == stubLayouts[0] ? slot + 16 : nil,
                             stubLength: placed ? layout.count : 0)
    }

    /// The end of the `[vdso]` mapping and what its page padding holds there (`vdsoPadding`).
    private static func vdsoTail(of pid: Int32) -> (end: UInt64, free: Int, leftover: [UInt8]?)? {
        guard let (start, end) = vdsoRange(of: pid), end - start >= 4096, end - start <= 1 << 20 else { return nil }
        var image = [UInt8](repeating: 0, count: Int(end - start))
        guard (try? image.withUnsafeMutableBytes({ buffer throws(Errno) in
            try Kernel.readMemory(pid: pid, address: start, into: buffer)
        })) == image.count, let padding = vdsoPadding(image) else { return nil }
        return (end, padding.free, padding.leftover)
    }

    /// What the page padding of a vDSO `image` — past everything its ELF image holds (headers,
    /// loaded segments, section headers), which nothing reads or runs — holds at its end: how
    /// many zero bytes end it (`free`), or, zeros before them, the stubs of a Mitosis killed
    /// mid-injection (`leftover`, one of `stubLayouts`). Nil for an image that is not ELF.
    static func vdsoPadding(_ image: [UInt8]) -> (free: Int, leftover: [UInt8]?)? {
        guard image.count >= 64, image.starts(with: [0x7f, 0x45, 0x4c, 0x46]) else { return nil }
        func field(_ offset: Int, _ size: Int) -> Int {
            (0..<size).reduce(0) { $0 | Int(image[offset + $1]) << (8 * $1) }
        }
        let phoff = field(0x20, 8), shoff = field(0x28, 8)
        let phentsize = field(0x36, 2), phnum = field(0x38, 2), shentsize = field(0x3a, 2), shnum = field(0x3c, 2)
        guard phoff < image.count, phnum < 64, phoff + phnum * phentsize <= image.count, shoff <= image.count else { return nil }
        var used = max(shoff + shnum * shentsize, phoff + phnum * phentsize)
        for index in 0..<phnum where field(phoff + index * phentsize, 4) == 1 {  // PT_LOAD
            let header = phoff + index * phentsize
            used = max(used, field(header + 8, 8) + field(header + 0x20, 8))
        }
        guard used <= image.count else { return nil }
        for layout in stubLayouts where image.count - used >= layout.count && image.suffix(layout.count).elementsEqual(layout)
            && image[used..<image.count - layout.count].allSatisfy({ $0 == 0 }) {
            return (0, layout)
        }
        let lastUsed = image.lastIndex { $0 != 0 } ?? 0
        return (image.count - max(used, lastUsed + 1), nil)
    }

    /// A vDSO `image` as the kernel made it: the stubs a Mitosis killed mid-injection left in its
    /// padding read as the zeros they replaced (the restore record compares its vDSO's bytes
    /// with the restoring kernel's).
    public static func vdsoAsMade(_ image: [UInt8]) -> [UInt8] {
        guard let leftover = vdsoPadding(image)?.leftover else { return image }
        return image.dropLast(leftover.count) + [UInt8](repeating: 0, count: leftover.count)
    }

    /// The first `syscall` instruction (`0f 05`) in the vDSO's code: for when no stub can be placed.
    private static func vdsoSyscallInstruction(of pid: Int32) -> UInt64? {
        guard let (start, end) = vdsoRange(of: pid), end - start <= 1 << 20 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(end - start))
        let count = (try? bytes.withUnsafeMutableBytes { buffer throws(Errno) in
            try Kernel.readMemory(pid: pid, address: start, into: buffer)
        }) ?? 0
        guard count >= 2, let index = (0..<count - 1).first(where: { bytes[$0] == 0x0f && bytes[$0 + 1] == 0x05 }) else { return nil }
        return start + UInt64(index)
    }

    /// The address range of the `[vdso]` mapping in `/proc/PID/maps`.
    private static func vdsoRange(of pid: Int32) -> (UInt64, UInt64)? {
        guard let maps = try? Kernel.readFile("/proc/\(Kernel.procEntry(pid))/maps") else { return nil }
        // On the bytes: every injected call looks here, and splitting `maps` into strings cost
        // more than reading it.
        let suffix = Array("[vdso]".utf8)
        var lineStart = 0
        for index in 0...maps.count where index == maps.count || maps[index] == UInt8(ascii: "\n") {
            defer { lineStart = index + 1 }
            guard index - lineStart > suffix.count, maps[(index - suffix.count)..<index].elementsEqual(suffix) else { continue }
            let line = String(decoding: maps[lineStart..<index], as: UTF8.self)
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

    func threadError(_ error: Errno, _ thread: SeizedThread, _ what: String) -> MitosisError {
        if error == .noSuchProcess {  // only SIGKILL ends a frozen thread, and with it the process
            forget(thread.tid)
            return .targetExited(thread.pid)
        }
        return .system(operation: "\(what) thread \(thread.tid)", errno: error)
    }
}

/// Where a process runs injected system calls.
struct InjectionSite: Sendable {
    let address: UInt64
    /// Whether `address` is the self-healing stub (which needs a frame on the stack).
    let selfHealing: Bool
    /// The restart-keeping stub, where the vDSO had room for it beside the self-healing one.
    var restartKeeping: UInt64? = nil
    /// The bytes placed in the vDSO, to zero at thaw (0: nothing placed).
    let stubLength: Int
}

/// The registers a lending thread heals itself with, on its stack, and the bytes they covered:
/// an rt_sigreturn frame, or the block the restart-keeping code pops (`keepsRestart`).
struct HealingFrame {
    let address: UInt64
    let original: [UInt8]
    let keepsRestart: Bool

    /// The borrowed registers' `%rsp`: the block itself, or past the rt_sigreturn frame's return address.
    var stackPointer: UInt64 { keepsRestart ? address : address + 8 }

    /// Puts the covered bytes back (they lie below the red zone, where any signal frame could
    /// have overwritten them, but Mitosis leaves nothing behind).
    func restore(pid: Int32) {
        _ = try? original.withUnsafeBytes { buffer throws(Errno) in
            try Kernel.writeMemory(pid: pid, address: address, from: buffer)
        }
    }
}
