import Logging
import SystemPackage
import MitosisKernel
import MitosisModel

/// A frozen process (or process tree): every thread seized with `PTRACE_SEIZE` and held in a
/// ptrace-stop until `thaw()`.
///
/// Freezing is a scope. Prefer `withFrozenProcess`, which thaws on every path — success, error,
/// task cancellation. All of the actor's work runs on one dedicated OS thread, as ptrace
/// requires; when that thread ends, the kernel detaches whatever is still attached, so even a
/// crash of Mitosis leaves the target running.
///
/// Thawing restores the target exactly: signals that arrived while it was frozen are delivered
/// afterwards (none is consumed), and a process that was stopped by job control stays stopped.
///
/// A child of this process can be frozen only if nothing else here waits for it: ptrace-stops are
/// reported to the parent's `waitpid` too, and Foundation's `Process` reaps (and then believes
/// exited) the children it launched — start such targets with `posix_spawn`.
/// The freeze then fails with `.stopCollectedElsewhere` instead of hanging.
public actor Tracer {
    /// One seized thread.
    public struct SeizedThread: Equatable, Sendable {
        public let pid: Int32
        public let tid: Int32
        /// Non-nil when the thread was (or became) stopped by job control; it stays so after thaw.
        public internal(set) var groupStopSignal: Int32?
    }

    /// The process the freeze was asked for.
    public nonisolated let pid: Int32
    /// Every seized thread, grouped by process, in ascending tid order.
    public internal(set) var threads: [SeizedThread] = []
    /// The pids held: `pid` alone, or its whole tree.
    public var pids: [Int32] { Array(Set(threads.map(\.pid))).sorted() }

    /// Signals that a thread dequeued while Mitosis ran code in it (see `Injection/`): held back
    /// so that no handler runs on borrowed registers, and delivered at thaw, in order.
    package var deferredSignals: [Int32: [SignalInfo]] = [:]
    /// Threads whose current stop is a signal-delivery-stop: detaching them can deliver a signal
    /// with its original siginfo.
    package var inSignalDeliveryStop: Set<Int32> = []
    /// Where each process runs injected system calls, found once (see `Injection/`).
    var injectionSites: [Int32: InjectionSite] = [:]
    /// The ptrace options every thread is seized with (a husk's include more).
    package internal(set) var seizeOptions = Ptrace.traceSystemCallsOption
    /// Threads known to run under seccomp filters, which injected calls must not meet.
    var seccompFiltered: [Int32: Bool] = [:]

    /// How long one thread may take to reach its stop while seizing.
    private let stopTimeout: Duration
    let executor: DedicatedThreadExecutor
    /// False for the tracers of a restored tree's other members, which share the thread of the
    /// root's tracer (ptrace requests for them must come from it) and leave ending it to that one.
    private let ownsExecutor: Bool
    private var thawed = false
    private let logger = Logger(label: "mitosis.tracer")

    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    init(pid: Int32, stopTimeout: Duration, executor: DedicatedThreadExecutor? = nil, ownsExecutor: Bool = true,
         threads: [SeizedThread] = [], seizeOptions: Int = Ptrace.traceSystemCallsOption) {
        self.pid = pid
        self.seizeOptions = seizeOptions
        self.stopTimeout = stopTimeout
        self.executor = executor ?? DedicatedThreadExecutor(name: "mitosis-tracer-\(pid)")
        self.ownsExecutor = ownsExecutor
        self.threads = threads
    }

    /// Seizes and stops every thread of `pid` (and, with `includeDescendants`, of every process
    /// below it), race-free against threads and children created meanwhile.
    ///
    /// A thread that cannot stop — in uninterruptible sleep, or waiting for a `vfork` child — fails
    /// the freeze after `stopTimeout` with `.stopTimedOut`; everything seized is released.
    public static func freeze(pid: Int32, includeDescendants: Bool = false,
                              stopTimeout: Duration = .seconds(5)) async throws(MitosisError) -> Tracer {
        try TargetCheck.validate(pid, forTracing: true)
        let tracer = Tracer(pid: pid, stopTimeout: stopTimeout)
        do {
            try await tracer.seizeAll(includeDescendants: includeDescendants)
        } catch {
            await tracer.thaw()
            throw error
        }
        return tracer
    }

    /// Detaches every thread and ends the tracer thread. Safe to call more than once.
    public func thaw() {
        guard !thawed else { return }
        thawed = true
        removeInjectionStubs()
        for thread in threads {
            var pending = deferredSignals[thread.tid] ?? []
            var signal: Int32 = 0
            // The first held-back signal rides on the detach with its own siginfo; the kernel can
            // do that only from a signal-delivery-stop. Any others are sent again afterwards, with
            // their siginfo when the kernel allows it (sigqueue), else as a plain tgkill.
            if inSignalDeliveryStop.contains(thread.tid), let first = pending.first,
               (try? Ptrace.setSignalInfo(thread.tid, first)) != nil {
                signal = first.number
                pending.removeFirst()
            }
            do {
                try Ptrace.detach(thread.tid, signal: signal)
            } catch {
                // ESRCH: the thread died while frozen (only SIGKILL can do that). Its exit is
                // collected, or its parent could not reap it while this tracer's thread lives.
                logger.debug("detach \(thread.tid): \(error)")
                Ptrace.releaseDead(thread.tid)
            }
            for info in pending where (try? Kernel.threadQueueSignal(pid: thread.pid, tid: thread.tid, info: info)) == nil {
                try? Kernel.threadKill(pid: thread.pid, tid: thread.tid, signal: info.number)
            }
        }
        threads.removeAll()
        deferredSignals.removeAll()
        inSignalDeliveryStop.removeAll()
    }

    /// Ends the tracer's thread. The thread outlives `thaw()` so that calls made on a thawed
    /// tracer still run (and find no threads) instead of waiting forever; and a tracer dropped
    /// without `thaw()` still lets go: when its thread ends, the kernel detaches every tracee.
    deinit {
        if ownsExecutor { executor.shutdown() }
    }

    /// Threads of one process, ascending.
    public func threads(of pid: Int32) -> [Int32] {
        threads.filter { $0.pid == pid }.map(\.tid)
    }

    /// Throws unless `tid` is held by this tracer, so callers never issue ptrace requests for
    /// threads it does not own.
    package func requireSeized(_ tid: Int32) throws(MitosisError) {
        guard !thawed, threads.contains(where: { $0.tid == tid }) else {
            throw .system(operation: "ptrace on thread \(tid) (not frozen by this tracer)", errno: .noSuchProcess)
        }
    }

    // MARK: Seizing

    private func seizeAll(includeDescendants: Bool) throws(MitosisError) {
        var seized: Set<Int32> = []
        // Repeat until a pass finds nothing new: once every thread is stopped none can create
        // another, so the second quiet pass proves the set complete.
        while true {
            let processes = includeDescendants ? Kernel.processTree(root: pid) : [pid]
            var found = false
            for process in processes {
                let tids: [Int32]
                do {
                    tids = try Kernel.listDirectory("/proc/\(process)/task").compactMap { Int32($0) }.sorted()
                } catch {
                    if process == pid { throw .targetExited(pid) }
                    continue  // a descendant exited before we reached it
                }
                // Interrupt every new thread first, then collect the stops: the threads stop
                // side by side instead of one after another.
                var interrupted: [Int32] = []
                var failure: MitosisError?
                for tid in tids where !seized.contains(tid) {
                    // A main thread that exited while others run stays a zombie until the last
                    // one exits: it cannot be seized (EPERM) and has nothing to stop. Skip it.
                    if tid == process, Self.hasExited(tid, of: process) {
                        seized.insert(tid)
                        continue
                    }
                    found = true
                    seized.insert(tid)
                    do {
                        if try seizeAndInterrupt(pid: process, tid: tid) { interrupted.append(tid) }
                    } catch {
                        failure = error
                        break
                    }
                }
                // Even after a failure, wait for the threads already interrupted, so that thaw
                // can release them.
                let deadline = ContinuousClock.now + stopTimeout
                for tid in interrupted {
                    do {
                        if let thread = try awaitInterruptStop(pid: process, tid: tid, deadline: deadline) {
                            threads.append(thread)
                            abortRseqCriticalSection(thread)
                        }
                    } catch {
                        failure = failure ?? error
                    }
                }
                if let failure { throw failure }
            }
            if !found { break }
        }
        guard threads.contains(where: { $0.pid == pid }) else { throw .targetExited(pid) }
        threads.sort { ($0.pid, $0.tid) < ($1.pid, $1.tid) }
    }

    /// Seizes one thread and asks it to stop. Returns false if it exited first.
    private func seizeAndInterrupt(pid process: Int32, tid: Int32) throws(MitosisError) -> Bool {
        do {
            try Ptrace.seize(tid, options: seizeOptions)
            try Ptrace.interrupt(tid)
            return true
        } catch .noSuchProcess {
            return false
        } catch .notPermitted, .permissionDenied {
            // EPERM has three causes: the thread is already exiting, another tracer holds it, or
            // we lack the privilege.
            let status = (try? Kernel.readFile("/proc/\(process)/task/\(tid)/status"))
                .map { ProcStatus(parsing: String(decoding: $0, as: UTF8.self)) }
            guard let status, let state = status["State"]?.first else { return false }
            if state == "Z" || state == "X" { return false }
            if status.tracerPID != 0 { throw .alreadyTraced(process, tracer: status.tracerPID) }
            throw .permissionDenied(process, operation: "trace")
        } catch {
            throw .system(operation: "PTRACE_SEIZE \(tid)", errno: error)
        }
    }

    /// Waits until an interrupted thread is in a ptrace-stop. Returns nil if it exited first.
    private func awaitInterruptStop(pid process: Int32, tid: Int32,
                                    deadline: ContinuousClock.Instant) throws(MitosisError) -> SeizedThread? {
        var thread = SeizedThread(pid: process, tid: tid, groupStopSignal: nil)
        do {
            while true {
                guard let event = try Self.awaitStop(pid: process, tid: tid, deadline: deadline) else {
                    // It cannot be detached while it runs; ending the tracer thread (when this
                    // tracer is released) makes the kernel drop it, and the pending stop with it.
                    throw MitosisError.stopTimedOut(process, tid: tid, after: stopTimeout)
                }
                switch event {
                case .eventStop(event: Ptrace.stopEvent, let signal):
                    if signal != Linux.SIGTRAP { thread.groupStopSignal = signal }
                    return thread
                case .eventStop, .syscallStop:
                    return thread
                case .signalStop(let signal):
                    // A signal was about to be delivered: deliver it now, as it would have been
                    // without us, and keep waiting for the interrupt stop that is still pending.
                    try Ptrace.resume(tid, signal: signal)
                case .exited, .killed:
                    return nil
                }
            }
        } catch let error as MitosisError {
            throw error
        } catch Errno.noSuchProcess {
            return nil
        } catch {
            try? Ptrace.detach(tid)
            throw .system(operation: "stopping thread \(tid)", errno: error as? Errno ?? .ioError)
        }
    }

    /// The next event of `tid`, or nil once `deadline` passes without one. Polls with a short,
    /// growing pause: a blocking `waitpid` could not give up on a thread that never stops.
    /// Throws `.stopCollectedElsewhere` when the thread sits in a tracing stop that this wait
    /// never saw: another `waitpid` in this process took it.
    private static func awaitStop(pid process: Int32, tid: Int32, deadline: ContinuousClock.Instant) throws -> Ptrace.Event? {
        var pause: UInt32 = 2
        var stoppedUnseenSince: ContinuousClock.Instant?
        while true {
            if let event = try Ptrace.wait(tid, nonBlocking: true) { return event }
            let now = ContinuousClock.now
            if now >= deadline { return nil }
            if pause == 1000 {  // after about 2 ms of polling, look at the thread itself
                if Self.isInTracingStop(tid) {
                    let since = stoppedUnseenSince ?? now
                    stoppedUnseenSince = since
                    if now - since > .milliseconds(50) { throw MitosisError.stopCollectedElsewhere(process, tid: tid) }
                } else {
                    stoppedUnseenSince = nil
                }
            }
            Kernel.sleepThread(microseconds: pause)
            pause = min(pause * 2, 1000)
        }
    }

    /// The next event of seized thread `tid` of `process`, waiting as long as it takes.
    ///
    /// A thread-group leader is polled (a short, growing pause, as `awaitStop`): when the process
    /// is killed while frozen, the kernel holds the leader's exit back until every other thread
    /// has been reaped — and those, traced, are reaped only by this tracer, so a blocking wait
    /// for the leader would never return (`mitosis demo` hung so, its target killed during an
    /// injected program). Once the leader is a zombie, the other threads' exits are collected,
    /// then the leader's, and the process is gone.
    func awaitEvent(_ tid: Int32, of process: Int32) throws(Errno) -> Ptrace.Event {
        guard tid == process, threads.contains(where: { $0.pid == process && $0.tid != tid }) else {
            while true { if let event = try Ptrace.wait(tid) { return event } }
        }
        var pause: UInt32 = 2
        while true {
            if let event = try Ptrace.wait(tid, nonBlocking: true) { return event }
            if Self.hasExited(tid, of: process) {
                reapThreads(of: process)
                throw Errno.noSuchProcess
            }
            Kernel.sleepThread(microseconds: pause)
            pause = min(pause * 2, 1000)
        }
    }

    /// Collects the exits of a dying process's seized threads, its leader's (`process`) last
    /// (within a second: a thread this tracer does not know of would hold it back), so that its
    /// parent can reap it. The threads of the other processes of a frozen tree are left alone.
    private func reapThreads(of process: Int32) {
        let leader = process
        for thread in threads where thread.pid == process && thread.tid != leader {
            // An exit stop (PTRACE_O_TRACEEXIT) is resumed through; ECHILD: already collected.
            while let event = try? Ptrace.wait(thread.tid) {
                if case .exited = event { break }
                if case .killed = event { break }
                try? Ptrace.resume(thread.tid)
            }
        }
        let deadline = ContinuousClock.now + .seconds(1)
        while ContinuousClock.now < deadline {
            let next: Ptrace.Event?
            do { next = try Ptrace.wait(leader, nonBlocking: true) } catch { return }
            guard let event = next else {
                Kernel.sleepThread(microseconds: 1000)
                continue
            }
            if case .exited = event { return }
            if case .killed = event { return }
            try? Ptrace.resume(leader)
        }
    }

    /// Whether thread `tid` of `process` has exited (state Z or X: a zombie, or being reaped).
    private static func hasExited(_ tid: Int32, of process: Int32) -> Bool {
        guard let text = try? Kernel.readFile("/proc/\(process)/task/\(tid)/stat"),
              let state = ProcStat(parsing: String(decoding: text, as: UTF8.self))?.state else { return true }
        return state == "Z" || state == "X"
    }

    /// Whether `/proc` shows `tid` in a ptrace-stop (state `t`).
    private static func isInTracingStop(_ tid: Int32) -> Bool {
        guard let text = try? Kernel.readFile("/proc/\(tid)/stat") else { return false }
        return ProcStat(parsing: String(decoding: text, as: UTF8.self))?.state == "t"
    }
}

/// Freezes `pid` (or its tree), runs `body`, and thaws on every path, cancellation included.
public func withFrozenProcess<T: Sendable>(
    _ pid: Int32, includeDescendants: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (Tracer) async throws -> T
) async throws -> T {
    let tracer = try await Tracer.freeze(pid: pid, includeDescendants: includeDescendants)
    do {
        let result = try await body(tracer)
        await tracer.thaw()
        return result
    } catch {
        await tracer.thaw()
        throw error
    }
}
