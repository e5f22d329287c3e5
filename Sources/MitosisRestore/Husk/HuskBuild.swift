import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// The temporary pages a restore works with inside the husk: a gadget page holding a `syscall`
/// instruction (injected calls run there while the vDSO moves) and scratch pages for the
/// structures and paths system calls read. Placed where neither the husk nor the image has
/// anything; unmapped before the restored process runs.
struct WorkArea {
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

/// Phases of building the restored process inside a husk. All of it runs on the tracer's
/// thread (this is an extension of the `Tracer` actor), so ptrace requests and injected calls
/// need no hop between calls.
extension Tracer {
    /// Builds the image's process in the husk this tracer holds, runs `verify` with the process
    /// complete but not yet resumed, then lets it run and detaches. Returns phase timings and
    /// notes on what was restored otherwise than recorded.
    func buildRestoredProcess(_ plan: RestorePlan, chain: CheckpointChain,
                              verify: (@Sendable (Int32) throws -> Void)?) throws -> (phases: [String: Double], notes: [String]) {
        var timings: [String: Double] = [:]
        var notes: [String] = []
        let clock = ContinuousClock()
        var mark = clock.now
        func phase(_ name: String) {
            let now = clock.now
            let (seconds, attoseconds) = (now - mark).components
            timings[name] = Double(seconds) * 1000 + Double(attoseconds) / 1e15
            mark = now
        }
        var plan = plan
        plan.hostTids[plan.manifest.pid] = pid
        let area = try prepareEmptyAddressSpace(plan)
        phase("empty")
        try mapMemory(plan, chain: chain, area: area)
        phase("memory")
        try restoreProcessState(plan, area: area)
        // Copies of rebuilt TCP sockets, in repair mode until the end; let go of on every path
        // (on failure the husk dies and, with the last copy closed, its sockets close silently).
        var connections: [PendingConnection] = []
        defer { for pending in connections { try? pending.copy.close() } }
        try restoreDescriptors(plan, area: area, connections: &connections)
        try restoreLimits(plan)
        try restoreSeccomp(plan)
        try createThreads(&plan, area: area)
        try restoreThreadState(plan, area: area)
        notes += try restoreProcessAttributes(plan)
        try restoreTimers(plan, area: area)
        // Last of what needs privilege: the process may run as another user, with fewer capabilities.
        try restoreCredentials(plan, area: area)
        try queueSignals(plan, area: area)
        try removeWorkArea(area, plan: plan)
        phase("state")
        if let verify {
            do { try verify(pid) } catch { throw StepFailure(step: "verifying before resuming", detail: "\(error)") }
        }
        // Repair mode off last, once the process is complete: its connections start talking.
        try finishConnections(connections)
        try resumeThreads(plan)
        phase("resume")
        return (timings, notes)
    }
}
