import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// A restored process tree.
public struct TreeRestoreResult: Codable, Sendable, Equatable {
    public var root: Int32
    /// Each member, top-down.
    public var members: [RestoreResult]
    public var restoreMilliseconds: Double
    public var notes: [String]
}

/// Brings a process tree back from a tree image (`dump --tree`), top-down with the original
/// pids: the root's husk is created as for one process, each other member's husk from inside
/// its parent's (an injected `clone3` with `set_tid`), so that every restored parent is its
/// children's real parent and reaps them. Descriptions shared between members are created once
/// and taken by the others (`pidfd_getfd`), anonymous shared memory is one object mapped by all.
/// Every husk is traced from one thread with `PTRACE_O_EXITKILL`: a restore that fails, or a
/// Mitosis that dies, leaves no member behind.
public struct TreeRestorer: Sendable {
    public let image: TreeImage
    public let chains: [CheckpointChain]
    public var networkLock = true
    /// The network namespace to restore the tree into (`Restorer.networkNamespace`): the root's
    /// husk is born there, and every other member inside its parent, so there too.
    public var networkNamespace: String?
    /// When the tree gets a time namespace of its own (`Restorer.timeNamespace`), decided on the
    /// root's clocks: every member is born in it.
    public var timeNamespace = TimeNamespaceChoice.auto

    public init(image: TreeImage) throws(ImageError) {
        self.image = image
        var chains: [CheckpointChain] = []
        for member in image.members { chains.append(try member.chain()) }
        self.chains = chains
    }

    public var manifest: TreeManifest { image.manifest }

    /// Every reason the tree cannot be restored here, each naming its process.
    public func refusals() -> [RestoreRefusal] {
        let holdings = self.holdings
        var refusals: [RestoreRefusal] = []
        for member in image.members {
            refusals += RestorePlan.refusals(member.manifest, tree: holdings).map {
                RestoreRefusal("process \(member.manifest.pid), \($0.subject)", $0.reason)
            }
        }
        for shared in manifest.sharedMemory where ownerMapping(shared) == nil {
            refusals.append(RestoreRefusal("process \(shared.pid), mapping 0x\(String(shared.start, radix: 16))",
                                           "shared with process \(shared.owner), whose image has no mapping at 0x\(String(shared.ownerStart, radix: 16))"))
        }
        return refusals
    }

    private var holdings: TreeHoldings {
        var holdings = TreeHoldings()
        for member in image.members {
            for descriptor in member.manifest.descriptors ?? [] where descriptor.kind == .pipe {
                holdings.pipeEnds[descriptor.inode, default: []].insert(descriptor.flags & 3)
            }
            for pipe in member.manifest.restore?.pipes ?? [] where holdings.pipeContents[pipe.inode] == nil { holdings.pipeContents[pipe.inode] = pipe }
            for inode in manifest.lonePipes ?? [] { holdings.pipeEnds[inode] = [0, 1] }
            for socket in member.manifest.restore?.sockets ?? []
            where member.manifest.descriptors?.contains(where: { $0.inode == socket.inode }) == true {
                holdings.sockets[socket.inode] = socket
            }
        }
        return holdings
    }

    private func ownerMapping(_ shared: TreeManifest.SharedMemory) -> CheckpointMapping? {
        image.members.first { $0.manifest.pid == shared.owner }?.manifest.mappings.first { $0.start == shared.ownerStart }
    }

    /// What member `index` takes from earlier members and creates for later ones.
    /// `hosts`: each member's pid as this process sees it (another inside a new pid namespace).
    func links(_ index: Int, pool: DescriptionPool, hosts: [Int32: Int32] = [:]) -> TreeLinks {
        let manifests = image.members.map(\.manifest)
        let me = manifests[index]
        var links = TreeLinks(pool: pool)
        func holders(_ inode: UInt64, _ kind: OpenDescriptor.Kind) -> [Int] {
            manifests.indices.filter { manifests[$0].descriptors?.contains { $0.inode == inode && $0.kind == kind } == true }
        }
        let sockets = Dictionary((me.restore?.sockets ?? []).map { ($0.inode, $0) }, uniquingKeysWith: { a, _ in a })
        for descriptor in me.descriptors ?? [] {
            switch descriptor.kind {
            case .pipe:
                let holding = holders(descriptor.inode, .pipe)
                if let first = holding.first, first < index {
                    links.imports[descriptor.fd] = TreeLinks.pipeKey(descriptor.inode, write: descriptor.flags & 3 == 1)
                } else {
                    // A lone pipe's missing end is created here too, and closed with the parked ends.
                    if manifest.lonePipes?.contains(descriptor.inode) == true,
                       !links.foreign.contains(where: { $0.inode == descriptor.inode }) {
                        var missing = descriptor
                        missing.fd = -1
                        missing.flags = (descriptor.flags & ~3) | (descriptor.flags & 3 == 1 ? 0 : 1)
                        links.foreign.append(missing)
                    }
                    for later in holding where later > index {
                        for end in manifests[later].descriptors ?? [] where end.kind == .pipe && end.inode == descriptor.inode {
                            links.exports.insert(TreeLinks.pipeKey(end.inode, write: end.flags & 3 == 1))
                            if !(me.descriptors ?? []).contains(where: { $0.inode == end.inode && $0.flags & 3 == end.flags & 3 }) {
                                links.foreign.append(end)
                            }
                        }
                    }
                }
            case .socket:
                let peer = sockets[descriptor.inode]?.peerInode
                let holding = holders(descriptor.inode, .socket)
                let peerHolding = peer.map { holders($0, .socket) } ?? []
                if let first = (holding + peerHolding).min(), first < index {
                    links.imports[descriptor.fd] = TreeLinks.socketKey(descriptor.inode)
                    continue
                }
                if holding.contains(where: { $0 > index }) { links.exports.insert(TreeLinks.socketKey(descriptor.inode)) }
                if let peer, !holdersContain(me, peer), let later = peerHolding.first(where: { $0 > index }),
                   let end = manifests[later].descriptors?.first(where: { $0.inode == peer && $0.kind == .socket }) {
                    links.exports.insert(TreeLinks.socketKey(peer))
                    if !links.foreign.contains(where: { $0.inode == peer }) { links.foreign.append(end) }
                    if let state = manifests[later].restore?.sockets?.first(where: { $0.inode == peer }) { links.foreignSockets[peer] = state }
                }
            default:
                break
            }
        }
        for shared in manifest.sharedFiles {
            if shared.pid == me.pid { links.imports[shared.fd] = TreeLinks.fileKey(shared.owner, shared.ownerFd) }
            if shared.owner == me.pid { links.exports.insert(TreeLinks.fileKey(shared.owner, shared.ownerFd)) }
        }
        for shared in manifest.sharedMemory where shared.pid == me.pid {
            if let owner = ownerMapping(shared) { links.sharedMemory[shared.start] = (hosts[shared.owner] ?? shared.owner, owner.start, owner.end) }
        }
        return links
    }

    private func holdersContain(_ manifest: CheckpointManifest, _ inode: UInt64) -> Bool {
        manifest.descriptors?.contains { $0.inode == inode } == true
    }

    /// Restores the tree. `verify`, if given, runs for each member (its pid as this host sees
    /// it) once every member is complete but before any runs; throwing from it kills the whole
    /// tree. With `inNewPidNamespace` the tree is restored inside a new pid namespace, the
    /// root a child of its init (`Restorer.restore`): every member has its pid there.
    public func restore(inNewPidNamespace: Bool = false, verify: (@Sendable (Int32) throws -> Void)? = nil) async throws -> TreeRestoreResult {
        let clock = ContinuousClock()
        let started = clock.now
        let refusals = self.refusals()
        guard refusals.isEmpty, let rootRecord = image.members.first?.manifest.restore else { throw RestoreError.refused(image: image.path, refusals) }
        let manifests = image.members.map(\.manifest)
        // Where the root's husk is born, checked before anything exists; the others are born in it.
        let placement = try RestorePlacement(networkNamespace: networkNamespace, record: rootRecord, timeNamespace: timeNamespace)
        defer { placement.close() }
        let lockNamespace = placement.networkNamespace?.path
        // The restore's own lock now; the ones the dump left are lifted only once every member
        // is ready to run (or the restore failed): a restore killed before keeps them, as one
        // process's does, and the connections stay locked for the next.
        let records = manifests.compactMap(\.restore)
        let connections = records.flatMap { ($0.connections ?? []).map { ($0.connection.family, $0.connection.local, $0.connection.remote) } }
        let held = records.compactMap(\.networkLockTable)
        let networkLock = self.networkLock
        let lock: NetworkLock?
        do {
            lock = try await Blocking.run("mitosis-network-lock") { () throws -> NetworkLock? in
                networkLock && !connections.isEmpty ? try NetworkLock(connections, namespacePath: lockNamespace) : nil
            }
        } catch {
            throw RestoreError.failed(step: "locking the network for \(connections.count) TCP connection(s)", detail: "\(error)")
        }
        // Lifted when the tree runs, or has been killed; nft's exit is waited for off the pool.
        do {
            let result = try await restoreMembers(placement: placement, lockNamespace: lockNamespace, held: held,
                                                  inNewPidNamespace: inNewPidNamespace, verify: verify, clock: clock, started: started)
            await lock?.lift()
            return result
        } catch {
            await lock?.lift()
            throw error
        }
    }

    /// The husks made, built and let go, under the restore's network lock.
    private func restoreMembers(placement: RestorePlacement, lockNamespace: String?, held: [String], inNewPidNamespace: Bool,
                                verify: (@Sendable (Int32) throws -> Void)?, clock: ContinuousClock,
                                started: ContinuousClock.Instant) async throws -> TreeRestoreResult {
        let members = manifest.members
        let manifests = image.members.map(\.manifest)
        @Sendable func liftHeldLocks() throws {
            for table in held { try NetworkLock.remove(table, namespacePath: lockNamespace) }
        }

        let pool: DescriptionPool
        do { pool = try DescriptionPool(forNewPidNamespace: inNewPidNamespace) } catch {
            throw RestoreError.failed(step: "opening a pidfd of this process for the husks", detail: "\(error)")
        }
        defer { pool.close() }
        let root = try await placement.spawnHusk(pid: manifest.root, inNewPidNamespace: inNewPidNamespace)
        var tracers: [Int32: Tracer] = [manifest.root: root.tracer]
        var built: [Int32: BuiltProcess] = [:]
        defer { for process in built.values { for pending in process.connections { try? pending.copy.close() } } }
        var notes: [String] = []
        var results: [RestoreResult] = []
        var step = "creating the husk of process \(manifest.root)"
        do {
            // Top-down: a member's session first, then its children, born into it.
            for member in members {
                guard let tracer = tracers[member.pid] else { throw StepFailure(step: step, detail: "process \(member.pid) has no husk") }
                try await tracer.restoreSession(member)
                for child in members where child.parent == member.pid && child.pid != manifest.root {
                    step = "creating the husk of process \(child.pid) from inside its parent \(member.pid) (clone3 with set_tid)"
                    do {
                        tracers[child.pid] = try await tracer.forkHusk(pid: child.pid)
                    } catch Errno.fileExists {
                        throw RestoreError.pidTaken(child.pid, holder: Restorer.describeHolder(child.pid))
                    }
                }
            }
            step = "restoring process groups"
            let pids = Set(members.map(\.pid))
            // Group leaders first, then the members joining them.
            for member in members.sorted(by: { ($0.processGroup == $0.pid ? 0 : 1) < ($1.processGroup == $1.pid ? 0 : 1) }) {
                notes += try await tracers[member.pid]!.restoreGroup(member, inTree: pids.contains(member.processGroup))
            }
            let husks = Restorer.milliseconds(clock.now - started)
            let hosts = tracers.mapValues(\.pid)
            for (index, member) in members.enumerated() {
                step = "restoring process \(member.pid)"
                var plan = RestorePlan(manifest: manifests[index], record: manifests[index].restore!)
                plan.newPidNamespace = inNewPidNamespace
                plan.timeNamespace = placement.clocks != nil
                plan.tree = links(index, pool: pool, hosts: hosts)
                var process = try await tracers[member.pid]!.buildProcess(plan, chain: chains[index])
                process.timings["husk"] = index == 0 ? husks : 0
                built[member.pid] = process
            }
            // Every member verified before any runs: a failed check leaves none running.
            if let verify {
                for member in members {
                    step = "verifying process \(member.pid) before resuming"
                    do { try verify(hosts[member.pid]!) } catch { throw StepFailure(step: "the check failed", detail: "\(error)") }
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
                try await tracers[member.pid]!.finishProcess(&process, verify: nil, thaw: false)
                built[member.pid] = process
                notes += process.notes.map { "process \(member.pid): \($0)" }
            }
            step = "lifting the network lock the dump left"
            try await Blocking.run("mitosis-network-lock") { try liftHeldLocks() }
            for member in members.reversed() {
                step = "letting process \(member.pid) go"
                try await tracers[member.pid]!.releaseProcess(built[member.pid]!)
            }
            // The init may now reap and end once the restored processes have.
            root.releaseNamespace()
            let time = placement.timeNamespace(root.offsets)
            for (index, member) in members.enumerated() {
                let process = built[member.pid]!
                results.append(RestoreResult(pid: member.pid, threads: manifests[index].threads.count, descriptors: manifests[index].descriptors?.count ?? 0,
                                             restoreMilliseconds: Restorer.milliseconds(clock.now - started),
                                             hostPid: inNewPidNamespace ? hosts[member.pid] : nil,
                                             namespaceInitPid: member.pid == manifest.root ? root.namespace?.initPid : nil,
                                             phases: process.timings, networkNamespace: placement.networkNamespace?.given,
                                             timeNamespace: time, notes: process.notes))
            }
        } catch {
            // Deepest first, each reaped by its parent's husk; the root last, reaped here.
            for member in members.reversed() {
                guard let tracer = tracers[member.pid] else { continue }
                if member.pid == manifest.root {
                    await tracer.killHusk()
                } else if let parent = tracers[member.parent] {
                    await tracer.killChildHusk(parent: parent, pidInParent: member.pid)
                }
            }
            root.endNamespace()
            // Its clients then see a reset rather than a connection hanging for ever.
            try? await Blocking.run("mitosis-network-lock") { try liftHeldLocks() }
            if let failure = error as? RestoreError { throw failure }
            if let failure = error as? StepFailure { throw RestoreError.failed(step: "\(step): \(failure.step)", detail: failure.detail) }
            throw RestoreError.failed(step: step, detail: "\(error)")
        }
        return TreeRestoreResult(root: manifest.root, members: results, restoreMilliseconds: Restorer.milliseconds(clock.now - started), notes: notes)
    }
}
