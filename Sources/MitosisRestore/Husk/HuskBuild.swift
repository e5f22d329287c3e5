import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// The temporary pages a restore works with inside the husk: a gadget page holding a `syscall`
/// instruction (injected calls run there while the vDSO moves) and scratch pages for the
/// structures and paths system calls read. Placed where neither the husk nor the image has
/// anything; unmapped before the restored process runs.
struct WorkArea: Sendable {
    static let scratchPages = 4
    let start: UInt64
    var gadget: UInt64 { start }
    var scratch: UInt64 { start + Self.page }
    var length: Int { Int(Self.page) * (1 + Self.scratchPages) }
    var end: UInt64 { start + UInt64(length) }
    static let page = UInt64(PagemapFile.pageSize)

    // Scratch layout, in bytes from `scratch`.
    static let sigactions: UInt64 = 0        // 64 × 32
    static let mmMap: UInt64 = 2048          // struct prctl_mm_map, 104
    static let cloneArgs: UInt64 = 2304      // struct clone_args, 80
    static let setTid: UInt64 = 2400         // pid_t[1]
    static let auxv: UInt64 = 2560           // up to 1024
    static let timerArgs: UInt64 = 3584      // struct sigevent 64, itimerspec 32, timer id 8
    static let capabilities: UInt64 = 3712   // cap_user_header 8, cap_user_data[2] 24
    static let altStack: UInt64 = 3776       // stack_t, 24
    static let signalInfo: UInt64 = 3840     // siginfo_t, 128
    static let text: UInt64 = 4096           // a path or the group list, up to 3 pages
}

/// Milliseconds per named phase, measured one after the other.
struct PhaseClock {
    private let clock = ContinuousClock()
    private var mark: ContinuousClock.Instant
    private(set) var timings: [String: Double] = [:]

    init() { mark = clock.now }

    mutating func end(_ name: String) {
        let now = clock.now
        let (seconds, attoseconds) = (now - mark).components
        timings[name] = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        mark = now
    }
}

/// A process built in its husk, not yet running: what finishing it needs.
struct BuiltProcess {
    var plan: RestorePlan
    var timings: [String: Double]
    var notes: [String]
    /// Copies of rebuilt TCP sockets, in repair mode until `finishProcess`; the caller closes
    /// them on every path (on failure the husk dies and, with the last copy closed, its sockets
    /// close silently).
    var connections: [Tracer.PendingConnection]
}

/// Phases of building the restored process inside a husk, in halves that can be called apart:
/// a warm clone runs the first (`prepareHusk`) after an epoch is committed and the rest at its
/// promotion; a process tree builds every member (`buildProcess`) before any of them runs
/// (`finishProcess`). All of it runs on the tracer's thread (this is an extension of the
/// `Tracer` actor), so ptrace requests and injected calls need no hop between calls.
///
/// **The line between prepared and built** is what anything outside the husk could notice. The
/// first half only changes the husk's own address space: mappings created and filled, files
/// opened read-only to map them and closed again (a shared writable file mapping would write its
/// file: `RestorePlan.warmProblems` keeps those out of warm clones). The rest does everything
/// else — working directory, signal actions, mm bounds, every descriptor (files opened, sockets
/// created, bound, listening, TCP connections rebuilt), limits, threads, timers, credentials,
/// queued signals, registers — and lets the process run.
extension Tracer {
    /// Phases 1–2: an empty address space with the image's vDSO, then every mapping created
    /// and filled (`empty`, `memory`).
    func prepareHusk(_ plan: RestorePlan, chain: CheckpointChain) throws -> (area: WorkArea, phases: [String: Double]) {
        var clock = PhaseClock()
        let area = try prepareEmptyAddressSpace(plan)
        clock.end("empty")
        try mapMemory(plan, images: chain.images, area: area)
        clock.end("memory")
        return (area, clock.timings)
    }

    /// Phases 3–6 on a prepared husk, then `verify` with the process complete but not yet
    /// resumed, then the registers: the process runs, detached (`state`, `resume`). Returns
    /// phase timings and notes on what was restored otherwise than recorded.
    func finishHusk(_ plan: RestorePlan, area: WorkArea,
                    verify: (@Sendable (Int32) throws -> Void)?) throws -> (phases: [String: Double], notes: [String]) {
        var built = try buildState(plan, area: area)
        defer { for pending in built.connections { try? pending.copy.close() } }
        try finishProcess(&built, verify: verify)
        return (built.timings, built.notes)
    }

    /// Everything but the thaw, from an empty husk: memory, state, descriptors, threads,
    /// credentials.
    func buildProcess(_ plan: RestorePlan, chain: CheckpointChain) throws -> BuiltProcess {
        let (area, phases) = try prepareHusk(plan, chain: chain)
        var built = try buildState(plan, area: area)
        built.timings.merge(phases, uniquingKeysWith: { a, _ in a })
        return built
    }

    /// Phases 3–5 on a prepared husk: process state, descriptors, limits, seccomp, threads,
    /// timers, credentials, queued signals (`state`; its parts `state.process`,
    /// `state.descriptors`, `state.threads`, `state.rest`).
    func buildState(_ plan: RestorePlan, area: WorkArea) throws -> BuiltProcess {
        var clock = PhaseClock(), parts = PhaseClock()
        var notes: [String] = []
        var plan = plan
        plan.hostTids[plan.manifest.pid] = pid
        try restoreProcessState(plan, area: area)
        parts.end("state.process")
        var connections: [PendingConnection] = []
        do {
            try restoreDescriptors(plan, area: area, connections: &connections)
            try restoreLimits(plan)
            try restoreSeccomp(plan)
            parts.end("state.descriptors")
            try createThreads(&plan, area: area)
            try restoreThreadState(plan, area: area)
            parts.end("state.threads")
            notes += try restoreProcessAttributes(plan)
            try restoreTimers(plan, area: area)
            // Last of what needs privilege: the process may run as another user, with fewer capabilities.
            try restoreCredentials(plan, area: area)
            try queueSignals(plan, area: area)
            try removeWorkArea(area, plan: plan)
            parts.end("state.rest")
        } catch {
            for pending in connections { try? pending.copy.close() }
            throw error
        }
        clock.end("state")
        return BuiltProcess(plan: plan, timings: clock.timings.merging(parts.timings) { a, _ in a }, notes: notes, connections: connections)
    }

    /// Runs `verify` on the complete process, takes its connections out of repair mode, puts
    /// its registers back and lets it run (`resume`); with `thaw` false its registers are put
    /// back but it stays held with its connections in repair mode, ready for `releaseProcess`.
    func finishProcess(_ built: inout BuiltProcess, verify: (@Sendable (Int32) throws -> Void)?, thaw: Bool = true) throws {
        var clock = PhaseClock()
        if let verify {
            do { try verify(pid) } catch { throw StepFailure(step: "verifying before resuming", detail: "\(error)") }
        }
        if thaw {
            // Repair mode off last, once the process is complete: its connections start talking.
            try finishConnections(built.connections)
            try resumeThreads(built.plan)
        } else {
            try resumeThreads(built.plan, thaw: false)
        }
        clock.end("resume")
        built.timings.merge(clock.timings, uniquingKeysWith: { _, b in b })
    }

    /// Lets a process `finishProcess(thaw: false)` made ready go: its connections out of repair
    /// mode, then the thaw. A tree does this for every member at the end, so that a member's
    /// connections do not start talking while a Mitosis killed could still take it down.
    func releaseProcess(_ built: BuiltProcess) throws {
        try finishConnections(built.connections)
        thaw()
    }
}
