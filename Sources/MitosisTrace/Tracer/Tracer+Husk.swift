import SystemPackage
import MitosisKernel
import MitosisModel

/// A tracer over a husk: an empty process this one creates with a chosen pid, for a restore to
/// fill by injected system calls (MitosisRestore). The husk is seized with `PTRACE_O_EXITKILL`,
/// so that if Mitosis dies mid-restore the kernel kills the half-built process, and with
/// `PTRACE_O_TRACECLONE`, so that threads created in it are held from their first instruction.
extension Tracer {
    /// Creates the husk on the tracer's own thread (the husk dies with that thread until it is
    /// told otherwise) and holds it stopped in its `pause()`. Throws the `Errno` of `clone3`
    /// (`EEXIST`: the pid is taken) or a `MitosisError`.
    /// `placement` puts it in another network namespace and a time namespace of its own
    /// (`Kernel.spawn(_:_:)`); the offsets of that time namespace are returned.
    package static func spawnHusk(pid: Int32, placement: HuskPlacement = HuskPlacement()) async throws
        -> (tracer: Tracer, offsets: TimeNamespaceOffsets?) {
        let tracer = Tracer(pid: pid, stopTimeout: .seconds(5))
        let offsets = try await tracer.startHusk(placement)
        return (tracer, offsets)
    }

    /// Creates the husk with `pid` inside a new pid namespace (as `spawnHusk`, but the pid can be
    /// taken here): the tracer's `pid` is the husk's pid as this process sees it. Also returns
    /// the namespace's init and its control pipe (`Kernel.spawnHuskInNewPidNamespace`).
    package static func spawnHuskInNewPidNamespace(pid: Int32, placement: HuskPlacement = HuskPlacement()) async throws
        -> (tracer: Tracer, initPid: Int32, control: FileDescriptor, offsets: TimeNamespaceOffsets?) {
        let executor = DedicatedThreadExecutor(name: "mitosis-husk-\(pid)")
        // The namespace's init must be created by the thread that will trace the husk.
        let spawned = try await OnThread(executor).run { () throws in try Kernel.spawnHuskInNewPidNamespace(pid: pid, placement: placement) }
        let tracer = Tracer(pid: spawned.husk, stopTimeout: .seconds(5), executor: executor)
        do {
            try await tracer.seizeHusk(spawned.husk)
        } catch {
            try? spawned.control.close()
            Kernel.reap(spawned.initPid)
            throw error
        }
        return (tracer, spawned.initPid, spawned.control, spawned.offsets)
    }

    private func startHusk(_ placement: HuskPlacement) throws -> TimeNamespaceOffsets? {
        let spawned = try Kernel.spawnHusk(pid: pid, placement: placement)
        try seizeHusk(spawned.husk)
        return spawned.offsets
    }

    private func seizeHusk(_ husk: Int32) throws {
        do throws(Errno) {
            // Seccomp suspended for as long as the husk is traced: filters restored into it must
            // not see the calls that finish the restore (without CAP_SYS_ADMIN, none are restored).
            let options = Ptrace.killOnExitOption | Ptrace.traceCloneOption | Ptrace.traceSystemCallsOption
            do throws(Errno) {
                try Ptrace.seize(husk, options: options | Ptrace.suspendSeccompOption)
                seizeOptions = options | Ptrace.suspendSeccompOption
            } catch .notPermitted {
                try Ptrace.seize(husk, options: options)
                seizeOptions = options
            }
            // The husk may still be setting itself up: let it run until it waits in pause().
            for _ in 0..<1000 {
                try Ptrace.interrupt(husk)
                guard case .eventStop = try Ptrace.wait(husk) else { throw Errno.noSuchProcess }
                if try Ptrace.generalRegisters(husk).origRax == UInt64(SyscallNumber.pause) {
                    threads = [SeizedThread(pid: husk, tid: husk, groupStopSignal: nil)]
                    return
                }
                try Ptrace.resume(husk)
                Kernel.sleepThread(microseconds: 1000)
            }
            throw Errno.timedOut
        } catch {
            _ = try? Kernel.sendSignal(pid: husk, Linux.SIGKILL)
            Kernel.reap(husk)
            throw MitosisError.system(operation: "seizing the husk \(husk)", errno: error)
        }
    }

    /// Holds thread `tid`, just created in the husk by an injected `clone3`, once it reports its
    /// first stop, so that injection and register writes can use it.
    package func adoptClonedThread(_ tid: Int32) throws(MitosisError) {
        do throws(Errno) {
            while true {
                guard let event = try Ptrace.wait(tid) else { continue }
                if case .eventStop = event { break }
                if case .signalStop = event { break }
                throw Errno.noSuchProcess
            }
        } catch {
            throw .system(operation: "waiting for the new thread \(tid)", errno: error)
        }
        threads.append(SeizedThread(pid: pid, tid: tid, groupStopSignal: nil))
        threads.sort { $0.tid < $1.tid }
    }

    /// Makes injected calls run at `address`, a `syscall` instruction the husk can execute
    /// (its gadget page while its vDSO moves; the restored vDSO before the gadget goes). No
    /// self-healing frame: the husk's stack is gone, and a husk Mitosis lets go of is killed.
    package func useSyscallInstruction(_ address: UInt64) {
        injectionSites[pid] = InjectionSite(address: address, selfHealing: false, stubLength: 0)
    }

    /// Kills the husk and reaps it, for a restore that failed: no half-built process survives.
    package func killHusk() {
        _ = try? Kernel.sendSignal(pid: pid, Linux.SIGKILL)
        // Traced threads stay zombies until their tracer reaps them; the leader goes last.
        for thread in threads where thread.tid != pid { Kernel.reap(thread.tid) }
        Kernel.reap(pid)
        threads.removeAll()
        thaw()
    }
}

/// Runs work on a given dedicated thread (for what must happen on a tracer's thread before the
/// tracer exists).
private actor OnThread {
    let executor: DedicatedThreadExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    init(_ executor: DedicatedThreadExecutor) { self.executor = executor }

    func run<T: Sendable>(_ body: @Sendable () throws -> T) throws -> T { try body() }
}

extension Tracer {
    /// Creates a child of this husk with pid `child` — `clone3` with `set_tid` and `SIGCHLD`
    /// injected into it, so that the husk is the child's real parent (it gets its `SIGCHLD` and
    /// reaps it) — and returns a tracer of the child on this tracer's own thread. The child
    /// starts traced (`PTRACE_O_TRACEFORK`), stopped before its first instruction, and inherits
    /// `PTRACE_O_EXITKILL`: it dies with Mitosis as the husk does. Throws the `Errno` of
    /// `clone3` (`EEXIST`: the pid is taken).
    package func forkHusk(pid child: Int32) throws -> Tracer {
        let page = try injectMmap(length: 4096)
        defer { try? injectMunmap(address: page, length: 4096) }
        var setTid = child
        try withUnsafeBytes(of: &setTid) { buffer in
            guard try Kernel.writeMemory(pid: pid, address: page + 128, from: buffer) == buffer.count else { throw Errno.ioError }
        }
        let args = CloneArguments(flags: 0, setTid: page + 128, setTidSize: 1, exitSignal: UInt64(Linux.SIGCHLD))
        try args.bytes.withUnsafeBytes { buffer in
            guard try Kernel.writeMemory(pid: pid, address: page, from: buffer) == buffer.count else { throw Errno.ioError }
        }
        // The child inherits the options (exit-kill, seccomp suspended): it is traced as this husk is.
        seizeOptions |= Ptrace.traceForkOption
        try Ptrace.setOptions(pid, seizeOptions)
        let created = Int32(truncatingIfNeeded: try performSyscall(SyscallNumber.clone3, [page, UInt64(CloneArguments.size)]))
        // Inside a new pid namespace `clone3` answers the child's pid there; ptrace and /proc here
        // need the one this process sees.
        var host = created
        do throws(Errno) {
            guard created == child else { throw Errno.invalidArgument }
            host = try hostPid(ofChild: child)
            while true {
                guard let event = try Ptrace.wait(host) else { continue }
                if case .eventStop = event { break }
                if case .signalStop = event { break }
                throw Errno.noSuchProcess
            }
        } catch {
            _ = try? Kernel.sendSignal(pid: host, Linux.SIGKILL)
            throw MitosisError.system(operation: "holding the new husk \(child)", errno: error)
        }
        return Tracer(pid: host, stopTimeout: .seconds(5), executor: executor, ownsExecutor: false,
                      threads: [SeizedThread(pid: host, tid: host, groupStopSignal: nil)], seizeOptions: seizeOptions)
    }

    /// The pid this process sees for the husk's child whose pid in the husk's own pid namespace
    /// is `child` (the last `NSpid` of its status): the same pid outside a new namespace.
    private func hostPid(ofChild child: Int32) throws(Errno) -> Int32 {
        let listed = (try? Kernel.readFile("/proc/\(pid)/task/\(pid)/children")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        for candidate in listed.split(separator: " ").compactMap({ Int32($0) }) {
            guard let status = try? Kernel.readFile("/proc/\(candidate)/status") else { continue }
            let ids = ProcStatus(parsing: String(decoding: status, as: UTF8.self))["NSpid"]?.split(separator: "\t")
            if ids?.last.flatMap({ Int32($0) }) == child { return candidate }
        }
        throw Errno.noSuchProcess
    }

    /// Kills this husk, a child of another husk (`parent`, still held): the tracer collects its
    /// end, then the parent reaps it by an injected `wait4` so that no zombie is left for init.
    /// `pidInParent` is its pid as the parent sees it (another than `pid` in a new pid namespace).
    package func killChildHusk(parent: Tracer, pidInParent: Int32) async {
        _ = try? Kernel.sendSignal(pid: pid, Linux.SIGKILL)
        for thread in threads where thread.tid != pid { Kernel.reap(thread.tid) }
        Kernel.reap(pid)
        threads.removeAll()
        thaw()
        _ = try? await parent.injectSyscall(SyscallNumber.wait4, [UInt64(pidInParent), 0, 0x4000_0001 /* __WALL | WNOHANG */, 0])
    }
}
