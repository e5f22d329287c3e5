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
    public func refusals() -> [RestoreRefusal] { Self.refusals(of: image) }

    /// As `refusals()`, from the tree image alone (no chain opened): what a standby's readiness
    /// check runs after every committed tree epoch.
    public static func refusals(of image: TreeImage) -> [RestoreRefusal] {
        let holdings = holdings(of: image)
        var refusals: [RestoreRefusal] = []
        for member in image.members {
            refusals += RestorePlan.refusals(member.manifest, tree: holdings).map {
                RestoreRefusal("process \(member.manifest.pid), \($0.subject)", $0.reason)
            }
        }
        for shared in image.manifest.sharedMemory where ownerMapping(shared, in: image) == nil {
            refusals.append(RestoreRefusal("process \(shared.pid), mapping 0x\(String(shared.start, radix: 16))",
                                           "shared with process \(shared.owner), whose image has no mapping at 0x\(String(shared.ownerStart, radix: 16))"))
        }
        return refusals
    }

    private static func holdings(of image: TreeImage) -> TreeHoldings {
        var holdings = TreeHoldings()
        for member in image.members {
            for descriptor in member.manifest.descriptors ?? [] where descriptor.kind == .pipe {
                holdings.pipeEnds[descriptor.inode, default: []].insert(descriptor.flags & 3)
            }
            for pipe in member.manifest.restore?.pipes ?? [] where holdings.pipeContents[pipe.inode] == nil { holdings.pipeContents[pipe.inode] = pipe }
            for inode in image.manifest.lonePipes ?? [] { holdings.pipeEnds[inode] = [0, 1] }
            for socket in member.manifest.restore?.sockets ?? []
            where member.manifest.descriptors?.contains(where: { $0.inode == socket.inode }) == true {
                holdings.sockets[socket.inode] = socket
            }
        }
        return holdings
    }

    private static func ownerMapping(_ shared: TreeManifest.SharedMemory, in image: TreeImage) -> CheckpointMapping? {
        image.members.first { $0.manifest.pid == shared.owner }?.manifest.mappings.first { $0.start == shared.ownerStart }
    }

    /// What member `index` takes from earlier members and creates for later ones.
    /// `hosts`: each member's pid as this process sees it (another inside a new pid namespace).
    func links(_ index: Int, pool: DescriptionPool, hosts: [Int32: Int32] = [:]) -> TreeLinks {
        Self.links(of: image, index, pool: pool, hosts: hosts)
    }

    /// `links` of a tree image (a prepared tree's, at each update).
    static func links(of image: TreeImage, _ index: Int, pool: DescriptionPool, hosts: [Int32: Int32]) -> TreeLinks {
        let manifest = image.manifest
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
            if let owner = Self.ownerMapping(shared, in: image) { links.sharedMemory[shared.start] = (hosts[shared.owner] ?? shared.owner, owner.start, owner.end) }
        }
        return links
    }

    private static func holdersContain(_ manifest: CheckpointManifest, _ inode: UInt64) -> Bool {
        manifest.descriptors?.contains { $0.inode == inode } == true
    }

    /// Why the tree cannot be prepared ahead of its restore (a warm clone), each naming its
    /// process: what `Restorer.preparationRefusals` says of each member.
    public func preparationRefusals() -> [RestoreRefusal] {
        image.members.flatMap { member in
            RestorePlan.preparationProblems(member.manifest).map { RestoreRefusal("process \(member.manifest.pid), \($0.subject)", $0.reason) }
        }
    }

    /// Restores the tree. `verify`, if given, runs for each member (its pid as this host sees
    /// it) once every member is complete but before any runs; throwing from it kills the whole
    /// tree. With `inNewPidNamespace` the tree is restored inside a new pid namespace, the
    /// root a child of its init (`Restorer.restore`): every member has its pid there.
    /// The same as `prepare` then `PreparedTree.finish`.
    public func restore(inNewPidNamespace: Bool = false, verify: (@Sendable (Int32) throws -> Void)? = nil) async throws -> TreeRestoreResult {
        let clock = ContinuousClock()
        let started = clock.now
        let prepared: PreparedTree
        do {
            prepared = try await prepare(inNewPidNamespace: inNewPidNamespace)
        } catch {
            // A restore that fails lifts the locks the dump left: the clients then see a reset
            // rather than a connection hanging for ever (`finish` does so for its own failures).
            let held = image.members.compactMap(\.manifest.restore?.networkLockTable)
            let namespace = networkNamespace.map(HuskPlacementPlan.networkNamespacePath)
            try? await Blocking.run("mitosis-network-lock") { for table in held { try NetworkLock.remove(table, namespacePath: namespace) } }
            throw error
        }
        var result = try await prepared.finish(verify: verify)
        result.restoreMilliseconds = (clock.now - started).inMilliseconds
        return result
    }

    /// Restores the tree up to its members' address spaces (phases 0–2): every husk created
    /// top-down with its pid, session and group, each holding its member's memory (anonymous
    /// shared memory one object mapped by all), frozen under ptrace, with nothing visible
    /// outside (no descriptor, socket, thread or file write). `PreparedTree.update` brings it to
    /// a newer tree epoch of the same members, `finish` completes the restore.
    public func prepare(inNewPidNamespace: Bool = false) async throws -> PreparedTree {
        let clock = ContinuousClock()
        let started = clock.now
        let refusals = self.refusals()
        guard refusals.isEmpty, let rootRecord = image.members.first?.manifest.restore else { throw RestoreError.refused(image: image.path, refusals) }
        let members = manifest.members
        let manifests = image.members.map(\.manifest)
        // Where the root's husk is born, checked before anything exists; the others are born in it.
        let placement = try RestorePlacement(networkNamespace: networkNamespace, record: rootRecord, timeNamespace: timeNamespace)
        defer { placement.close() }
        let pool: DescriptionPool
        do { pool = try DescriptionPool(forNewPidNamespace: inNewPidNamespace) } catch {
            throw RestoreError.failed(step: "opening a pidfd of this process for the husks", detail: "\(error)")
        }
        let root: PlacedHusk
        do { root = try await placement.spawnHusk(pid: manifest.root, inNewPidNamespace: inNewPidNamespace) } catch {
            pool.close()
            throw error
        }
        var tracers: [Int32: Tracer] = [manifest.root: root.tracer]
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
            var notes: [String] = []
            // Group leaders first, then the members joining them.
            for member in members.sorted(by: { ($0.processGroup == $0.pid ? 0 : 1) < ($1.processGroup == $1.pid ? 0 : 1) }) {
                notes += try await tracers[member.pid]!.restoreGroup(member, inTree: pids.contains(member.processGroup))
            }
            let husks = (clock.now - started).inMilliseconds
            let hosts = tracers.mapValues(\.pid)
            var prepared: [PreparedTree.Member] = []
            for (index, member) in members.enumerated() {
                step = "restoring the memory of process \(member.pid)"
                var plan = RestorePlan(manifest: manifests[index], record: manifests[index].restore!)
                plan.newPidNamespace = inNewPidNamespace
                plan.timeNamespace = placement.clocks != nil
                plan.tree = links(index, pool: pool, hosts: hosts)
                var (area, phases) = try await tracers[member.pid]!.prepareHusk(plan, chain: chains[index])
                phases["husk"] = index == 0 ? husks : 0
                prepared.append(PreparedTree.Member(pid: member.pid, parent: member.parent, tracer: tracers[member.pid]!, area: area, phases: phases))
            }
            return PreparedTree(image: image, members: prepared, root: root, pool: pool, networkLock: networkLock, inNewPidNamespace: inNewPidNamespace,
                                placement: .init(networkNamespace: placement.networkNamespace?.given, lockNamespace: placement.networkNamespace?.path,
                                                 time: placement.timeNamespace(root.offsets)),
                                timeNamespace: placement.clocks != nil, notes: notes)
        } catch {
            await PreparedTree.kill(members: members, root: manifest.root, tracers: tracers, husk: root)
            pool.close()
            if let failure = error as? RestoreError { throw failure }
            if let failure = error as? StepFailure { throw RestoreError.failed(step: "\(step): \(failure.step)", detail: failure.detail) }
            throw RestoreError.failed(step: step, detail: "\(error)")
        }
    }
}
