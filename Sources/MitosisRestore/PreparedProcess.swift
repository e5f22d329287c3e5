import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// A process restored up to its address space (`Restorer.prepare`): a husk with the image's pid
/// holding exactly the image's memory, stopped under ptrace with `PTRACE_O_EXITKILL` (if the
/// tracing thread or this process dies, the kernel kills it), with nothing visible outside it.
///
/// A warm clone keeps one: `update` applies each newer image of the same process to it, and
/// `finish` completes the restore in the time the descriptors, threads and registers take.
/// Every call that fails kills the husk (a husk in an unknown state is never finished); so do
/// `discard` and a failed `finish`. Calls must not overlap: each one is refused while another
/// runs.
public actor PreparedProcess {
    /// The process's pid (inside its pid namespace when prepared in a new one).
    public nonisolated let pid: Int32
    /// The husk's pid as this host sees it (the same as `pid` unless in a new pid namespace).
    public nonisolated let hostPid: Int32
    /// The new pid namespace's init, when prepared in one.
    public nonisolated let namespaceInitPid: Int32?
    /// The image whose memory the husk holds.
    public private(set) var image: CheckpointImage
    /// Whether the husk still exists (not finished, discarded or failed).
    public var isAlive: Bool { state.phase == .ready }

    private var state = PreparedState()
    private let tracer: Tracer
    private let area: WorkArea
    /// The first image's plan: what the husk was placed in, for the plans of later images.
    private let basePlan: RestorePlan
    private let placement: Placement
    private let segments: SharedMemorySegments?
    private let control: FileDescriptor?
    private let networkLock: Bool
    /// `nft` started ahead, its table still empty (starting it takes milliseconds): `finish`
    /// only adds the connections' rules. Nil when unavailable; `finish` then starts one.
    private var readyLock: NetworkLock?
    /// Milliseconds of `husk`, `empty` and `memory`, reported by a `finish` after a cold `restore`.
    private let preparePhases: [String: Double]

    /// Where the husk was born: its network namespace (as given, and its path for `nft`) and
    /// its time namespace.
    struct Placement: Sendable {
        var networkNamespace: String?
        var lockNamespace: String?
        var time: RestoredTimeNamespace?
    }

    init(image: CheckpointImage, tracer: Tracer, area: WorkArea, plan: RestorePlan, namespace: (initPid: Int32, control: FileDescriptor)?,
         placement: Placement, segments: SharedMemorySegments?, networkLock: Bool, readyLock: NetworkLock?, phases: [String: Double]) {
        self.readyLock = readyLock
        self.image = image
        self.tracer = tracer
        self.area = area
        basePlan = plan
        self.placement = placement
        self.segments = segments
        self.networkLock = networkLock
        pid = image.manifest.pid
        hostPid = tracer.pid
        namespaceInitPid = namespace?.initPid
        control = namespace?.control
        preparePhases = phases
    }

    /// Brings the husk's memory to `newer`, a later image of the same process (its chain must
    /// hold the current one's pages where `newer` inherits them). On failure the husk is killed
    /// and the error says why: the caller prepares a new one from the chain.
    public func update(to newer: CheckpointImage) async throws -> HuskUpdate {
        try state.begin("update", of: "the prepared process")
        do {
            let report = try await tracer.updateHusk(from: image.manifest, to: newer, area: area)
            image = newer
            state.phase = .ready
            return report
        } catch {
            await kill()
            throw RestoreError.from(error)
        }
    }

    /// Completes the restore from the image the husk holds: process state, descriptors,
    /// threads, timers, credentials, signals, registers; `verify` runs before the process
    /// resumes (see `Restorer.restore`). The process then runs, detached.
    public func finish(verify: (@Sendable (Int32) throws -> Void)? = nil) async throws -> RestoreResult {
        try state.begin("finish", of: "the prepared process")
        let clock = ContinuousClock()
        let started = clock.now
        let manifest = image.manifest
        do {
            let refusals = RestorePlan.refusals(manifest)
            guard refusals.isEmpty, let record = manifest.restore else { throw RestoreError.refused(image: image.path, refusals) }
            try await Blocking.run("mitosis-prepared-check") { [self] in try checkMappedFiles() }
            let checked = clock.now
            var plan = RestorePlan(manifest: manifest, record: record)
            plan.newPidNamespace = basePlan.newPidNamespace
            plan.timeNamespace = basePlan.timeNamespace
            plan.sharedMemoryFilled = basePlan.sharedMemoryFilled
            // The restore's own lock first, then the one the dump left: never a moment unlocked.
            let connections = (record.connections ?? []).map { ($0.connection.family, $0.connection.local, $0.connection.remote) }
            let networkLock = self.networkLock
            let lockNamespace = placement.lockNamespace
            let ready = readyLock
            readyLock = nil
            let lock: NetworkLock?
            do {
                lock = try await Blocking.run("mitosis-network-lock") { () throws -> NetworkLock? in
                    var lock: NetworkLock?
                    if networkLock && !connections.isEmpty {
                        if let ready { try ready.lock(connections) }
                        lock = try ready ?? NetworkLock(connections, namespacePath: lockNamespace)
                    } else {
                        ready?.release()
                    }
                    if let held = record.networkLockTable { try NetworkLock.remove(held, namespacePath: lockNamespace) }
                    return lock
                }
            } catch {
                throw StepFailure(step: "locking the network for \(connections.count) TCP connection(s)", detail: "\(error)")
            }
            // Lifted once the process runs, or has been killed: a client of a failed restore then
            // sees a reset, not a connection hanging for ever.
            let locked = clock.now
            let finished: (phases: [String: Double], notes: [String])
            do { finished = try await tracer.finishHusk(plan, area: area, verify: verify) } catch {
                await lock?.lift()
                throw error
            }
            await lock?.lift()
            var (phases, notes) = finished
            phases["check"] = (checked - started).inMilliseconds
            phases["lock"] = (locked - checked).inMilliseconds
            notes += segments?.markRemoved() ?? []
            state.phase = .gone
            // The init may now reap and end once the restored process does.
            try? control?.close()
            return RestoreResult(pid: pid, threads: manifest.threads.count, descriptors: manifest.descriptors?.count ?? 0,
                                 restoreMilliseconds: (clock.now - started).inMilliseconds,
                                 hostPid: basePlan.newPidNamespace ? hostPid : nil, namespaceInitPid: namespaceInitPid,
                                 phases: preparePhases.merging(phases) { _, new in new }, networkNamespace: placement.networkNamespace,
                                 timeNamespace: placement.time, notes: notes)
        } catch {
            await kill()
            throw RestoreError.from(error)
        }
    }

    /// Kills the husk (and its namespace's init): nothing of it is left.
    public func discard() async {
        guard state.phase == .ready else { return }
        await kill()
    }

    private func kill() async {
        state.phase = .gone
        await readyLock?.lift()
        readyLock = nil
        await tracer.killHusk()
        segments?.removeCreated()
        if let control, let initPid = namespaceInitPid {
            try? control.close()
            Kernel.reap(initPid)
        }
    }

    /// A husk maps files by their inode: one replaced since (a data file written at promotion,
    /// a library upgraded) would leave it with the old contents. Such a husk is not finished.
    private nonisolated func checkMappedFiles() throws {
        let maps: [MemoryMapping]
        do { maps = ProcMaps.parse(String(decoding: try Kernel.readFile("/proc/\(hostPid)/maps"), as: UTF8.self)) } catch {
            throw StepFailure(step: "reading the prepared process's maps", detail: "\(error)")
        }
        for mapping in maps where mapping.kind == .file && mapping.inode != 0 {
            guard let path = mapping.path else { continue }
            let now = try? Kernel.status(path)
            if mapping.deleted || now.map({ DeviceNumber(encoded: $0.device) != mapping.device || $0.inode != mapping.inode }) ?? true {
                throw StepFailure(step: "checking the files the prepared process maps", detail: "\(path) was replaced since it was mapped")
            }
        }
    }

}
