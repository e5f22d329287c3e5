import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// A process tree restored up to its members' address spaces (`TreeRestorer.prepare`): every
/// husk with its pid, parent, session and group, holding exactly its member's memory, stopped
/// under ptrace with `PTRACE_O_EXITKILL`, nothing visible outside. What `PreparedProcess` is
/// for one process: a warm clone of a tree keeps one, `update` applies each newer tree epoch of
/// the same members, `finish` completes the restore of all of them and lets them run together.
/// Every call that fails kills the whole tree; calls must not overlap.
public actor PreparedTree {
    /// One member's husk and what its finish needs.
    struct Member: Sendable {
        var pid: Int32
        var parent: Int32
        var tracer: Tracer
        var area: WorkArea
        /// Milliseconds of `husk`, `empty` and `memory`, reported by the finish.
        var phases: [String: Double]
    }

    /// The tree image whose memory the husks hold.
    public private(set) var image: TreeImage
    /// The root's pid (inside its pid namespace when prepared in a new one), and as this host sees it.
    public nonisolated let root: Int32
    public nonisolated let rootHostPid: Int32
    /// Each member's pid as this host sees it (the same unless in a new pid namespace).
    public nonisolated let hostPids: [Int32: Int32]
    /// Whether the husks still exist (not finished, discarded or failed).
    public var isAlive: Bool { state.phase == .ready }

    private var state = PreparedState()
    private var members: [Member]
    private let networkLock: Bool
    private let husk: PlacedHusk
    private let pool: DescriptionPool
    private let inNewPidNamespace: Bool
    private let placement: PreparedProcess.Placement
    private let timeNamespace: Bool
    private let notes: [String]

    init(image: TreeImage, members: [Member], root: PlacedHusk, pool: DescriptionPool, networkLock: Bool, inNewPidNamespace: Bool,
         placement: PreparedProcess.Placement, timeNamespace: Bool, notes: [String]) {
        self.image = image
        self.networkLock = networkLock
        self.members = members
        husk = root
        self.pool = pool
        self.inNewPidNamespace = inNewPidNamespace
        self.placement = placement
        self.timeNamespace = timeNamespace
        self.notes = notes
        self.root = image.manifest.root
        rootHostPid = root.tracer.pid
        hostPids = Dictionary(uniqueKeysWithValues: members.map { ($0.pid, $0.tracer.pid) })
    }

    /// Brings every husk's memory to `newer`, a later tree epoch of the same members (pids and
    /// parents) sharing the same anonymous memory: each member's image applied to its husk
    /// (`PreparedProcess.update`). A tree that changed, or a failure, kills the tree: the
    /// caller prepares a new one from the newer epoch.
    public func update(to newer: TreeImage) async throws -> [HuskUpdate] {
        try state.begin("update", of: "the prepared tree")
        do {
            let step = "applying \(newer.path) to the prepared tree"
            guard newer.manifest.members.map({ [$0.pid, $0.parent] }) == members.map({ [$0.pid, $0.parent] }) else {
                throw StepFailure(step: step, detail: "its members or their parents differ from the prepared tree's")
            }
            // Shared memory is mapped from its owner once, when a husk is prepared: the same
            // objects at the same places, or a new tree.
            for index in members.indices {
                let before = TreeRestorer.links(of: image, index, pool: pool, hosts: hostPids).sharedMemory
                let after = TreeRestorer.links(of: newer, index, pool: pool, hosts: hostPids).sharedMemory
                guard before.keys.sorted() == after.keys.sorted(), before.allSatisfy({ start, owner in after[start].map { $0 == owner } ?? false }) else {
                    throw StepFailure(step: step, detail: "process \(members[index].pid) shares other anonymous memory than before")
                }
            }
            var reports: [HuskUpdate] = []
            for (index, member) in members.enumerated() {
                reports.append(try await member.tracer.updateHusk(from: image.members[index].manifest, to: newer.members[index], area: member.area))
            }
            image = newer
            state.phase = .ready
            return reports
        } catch {
            await kill()
            throw RestoreError.from(error)
        }
    }

    /// Completes the restore of every member from the tree image the husks hold (descriptors,
    /// what members share, threads, credentials, registers: `Restorer`'s phases 3–6); `verify`
    /// runs for each member once all are complete, before any runs; then every member is let
    /// go, children first, under the restore's network lock.
    public func finish(verify: (@Sendable (Int32) throws -> Void)? = nil) async throws -> TreeRestoreResult {
        try state.begin("finish", of: "the prepared tree")
        let clock = ContinuousClock()
        let started = clock.now
        let manifests = image.members.map(\.manifest)
        let records = manifests.compactMap(\.restore)
        let held = records.compactMap(\.networkLockTable)
        let lockNamespace = placement.lockNamespace
        @Sendable func liftHeldLocks() throws {
            for table in held { try NetworkLock.remove(table, namespacePath: lockNamespace) }
        }
        let connections = records.flatMap { ($0.connections ?? []).map { ($0.connection.family, $0.connection.local, $0.connection.remote) } }
        let networkLock = self.networkLock
        let lock: NetworkLock?
        do {
            lock = try await Blocking.run("mitosis-network-lock") { () throws -> NetworkLock? in
                networkLock && !connections.isEmpty ? try NetworkLock(connections, namespacePath: lockNamespace) : nil
            }
        } catch {
            await kill()
            try? await Blocking.run("mitosis-network-lock") { try liftHeldLocks() }
            throw RestoreError.failed(step: "locking the network for \(connections.count) TCP connection(s)", detail: "\(error)")
        }
        var built: [Int32: BuiltProcess] = [:]
        defer { for process in built.values { for pending in process.connections { try? pending.copy.close() } } }
        var notes = self.notes
        var step = "restoring the tree"
        do {
            for (index, member) in members.enumerated() {
                step = "restoring process \(member.pid)"
                var plan = RestorePlan(manifest: manifests[index], record: manifests[index].restore!)
                plan.newPidNamespace = inNewPidNamespace
                plan.timeNamespace = timeNamespace
                plan.tree = TreeRestorer.links(of: image, index, pool: pool, hosts: hostPids)
                var process = try await member.tracer.buildState(plan, area: member.area)
                process.timings.merge(member.phases, uniquingKeysWith: { a, _ in a })
                built[member.pid] = process
            }
            // Every member verified before any runs: a failed check leaves none running.
            if let verify {
                for member in members {
                    step = "verifying process \(member.pid) before resuming"
                    do { try verify(member.tracer.pid) } catch { throw StepFailure(step: "the check failed", detail: "\(error)") }
                }
            }
            // Every member made ready (registers) while all are held; then all are let go in one
            // go, children first (a parent that runs finds its children complete), their
            // connections out of repair mode just before: a Mitosis killed before this point
            // leaves no member and no connection reset, one killed within it at most the
            // members already let go.
            for member in members.reversed() {
                step = "resuming process \(member.pid)"
                var process = built[member.pid]!
                try await member.tracer.finishProcess(&process, verify: nil, thaw: false)
                built[member.pid] = process
                notes += process.notes.map { "process \(member.pid): \($0)" }
            }
            step = "lifting the network lock the dump left"
            try await Blocking.run("mitosis-network-lock") { try liftHeldLocks() }
            for member in members.reversed() {
                step = "letting process \(member.pid) go"
                try await member.tracer.releaseProcess(built[member.pid]!)
            }
        } catch {
            await kill()
            // Its clients then see a reset rather than a connection hanging for ever.
            try? await Blocking.run("mitosis-network-lock") { try liftHeldLocks() }
            await lock?.lift()
            if let failure = error as? RestoreError { throw failure }
            if let failure = error as? StepFailure { throw RestoreError.failed(step: "\(step): \(failure.step)", detail: failure.detail) }
            throw RestoreError.failed(step: step, detail: "\(error)")
        }
        await lock?.lift()
        state.phase = .gone
        pool.close()
        // The init may now reap and end once the restored processes have.
        husk.releaseNamespace()
        let results = members.enumerated().map { index, member in
            let process = built[member.pid]!
            return RestoreResult(pid: member.pid, threads: manifests[index].threads.count, descriptors: manifests[index].descriptors?.count ?? 0,
                                 restoreMilliseconds: (clock.now - started).inMilliseconds,
                                 hostPid: inNewPidNamespace ? member.tracer.pid : nil,
                                 namespaceInitPid: member.pid == root ? husk.namespace?.initPid : nil,
                                 phases: process.timings, networkNamespace: placement.networkNamespace,
                                 timeNamespace: placement.time, notes: process.notes)
        }
        return TreeRestoreResult(root: root, members: results, restoreMilliseconds: (clock.now - started).inMilliseconds, notes: notes)
    }

    /// Kills every husk (and the namespace's init): nothing of the tree is left.
    public func discard() async {
        guard state.phase == .ready else { return }
        await kill()
    }

    private func kill() async {
        state.phase = .gone
        let tracers = Dictionary(uniqueKeysWithValues: members.map { ($0.pid, $0.tracer) })
        await Self.kill(members: image.manifest.members, root: root, tracers: tracers, husk: husk)
        pool.close()
    }

    /// Kills the husks made so far: deepest first, each reaped by its parent's husk; the root
    /// last, reaped here; then the namespace's init.
    static func kill(members: [TreeManifest.Member], root: Int32, tracers: [Int32: Tracer], husk: PlacedHusk) async {
        for member in members.reversed() {
            guard let tracer = tracers[member.pid] else { continue }
            if member.pid == root {
                await tracer.killHusk()
            } else if let parent = tracers[member.parent] {
                await tracer.killChildHusk(parent: parent, pidInParent: member.pid)
            }
        }
        husk.endNamespace()
    }

}
