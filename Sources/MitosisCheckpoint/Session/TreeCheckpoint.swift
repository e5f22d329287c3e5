import MitosisImage
import MitosisKernel
import MitosisModel

/// A checkpoint of a process and all its descendants into one tree image (`dump --tree`,
/// Docs/restore.md "Process trees"): one full checkpoint per member, top-down, then what they
/// share — open file descriptions (kcmp across processes) and anonymous shared memory (the same
/// shmem inode) — in `tree.json`.
///
/// Each member is frozen for its own checkpoint, one after the other: the image holds each
/// member at its own instant, not the whole tree at one instant. The members are killed (with
/// `kill`) only once every image is committed and the tree is found unchanged; should a member
/// exit, or a process join the tree, the partial image is removed and every member keeps running.
public enum TreeCheckpoint {
    public struct Result: Sendable {
        public var manifest: TreeManifest
        /// Each member's checkpoint, in the manifest's order.
        public var members: [CheckpointResult]
    }

    /// Checkpoints the tree of `root` into the new tree image `path`. `afterMember` runs after
    /// each member's checkpoint (tests use it to change the tree mid-dump). `compression`: how
    /// every member's page data is compressed (`DirectorySink`).
    ///
    /// With `parent`, an earlier tree image of the same tree (`path`: where it is, relative to the
    /// new one), each member that has an image there gets an incremental checkpoint over it (pages
    /// whose bytes equal that image's chain are inherited); a member that is new gets a full one.
    public static func dump(root: Int32, to path: String, options: CheckpointOptions = CheckpointOptions(), kill: Bool = false,
                            parent: (image: TreeImage, path: String)? = nil, compression: PageCompression? = nil,
                            afterMember: (@Sendable (Int32) async -> Void)? = nil) async throws -> Result {
        let pids = Kernel.processTree(root: root)  // parents before their children
        guard pids.first == root else { throw MitosisError.noSuchProcess(root) }
        var options = options
        options.moveConnections = kill
        let writer = try TreeImageWriter(path: path)
        var sessions: [CheckpointSession] = []
        do {
            var results: [CheckpointResult] = []
            for pid in pids {
                let session: CheckpointSession
                do { session = try await CheckpointSession(pid: pid, options: options) } catch {
                    throw memberFailure(error, root: root, pid: pid)
                }
                sessions.append(session)
                // A member's image sits one level inside its tree image, as in the parent's.
                let base = parent.flatMap { parent in
                    parent.image.members.first { $0.manifest.pid == pid }.map { CheckpointParent.image($0, path: "../\(parent.path)/\(pid)") }
                }
                do {
                    results.append(try await session.checkpoint(to: DirectorySink(directory: writer.memberPath(pid), compression: compression), parent: base))
                } catch {
                    throw memberFailure(error, root: root, pid: pid)
                }
                await afterMember?(pid)
            }
            try requireUnchanged(root: root, pids: pids)
            let tree = try manifest(root: root, members: results.map(\.manifest))
            try writer.commit(tree)
            if kill {
                // The root first: a parent that outlived its children could react to their deaths
                // (a server master respawning workers).
                for session in sessions {
                    // A member that exited since its checkpoint is as the kill would leave it.
                    do { try await session.killTarget() } catch MitosisError.targetExited {}
                }
            } else {
                for session in sessions { await session.stop() }
            }
            return Result(manifest: tree, members: results)
        } catch {
            for session in sessions { await session.stop() }
            writer.abort()
            throw error
        }
    }

    /// Throws `treeChanged` unless the tree of `root` is made of `pids`, naming who exited or appeared.
    /// A member that has exited but is not reaped yet (a zombie) counts as gone.
    package static func requireUnchanged(root: Int32, pids: [Int32]) throws {
        let now = Kernel.processTree(root: root).filter { pid in
            guard let text = try? Kernel.readFile("/proc/\(pid)/stat"), let stat = ProcStat(parsing: String(decoding: text, as: UTF8.self)) else { return false }
            return stat.state != "Z" && stat.state != "X"
        }
        guard Set(now) != Set(pids) else { return }
        let gone = Set(pids).subtracting(now).sorted(), new = Set(now).subtracting(pids).sorted()
        throw CheckpointError.treeChanged(root: root, (gone.isEmpty ? "" : "process(es) \(gone.map(String.init).joined(separator: ", ")) exited")
            + (gone.isEmpty || new.isEmpty ? "" : "; ") + (new.isEmpty ? "" : "process(es) \(new.map(String.init).joined(separator: ", ")) appeared"))
    }

    /// The tree manifest of the members' checkpoints (top-down, the root first): parentage,
    /// sessions and groups from each member's process model, and what they share.
    package static func manifest(root: Int32, members manifests: [CheckpointManifest]) throws -> TreeManifest {
        var members: [TreeManifest.Member] = []
        for manifest in manifests {
            guard let identity = manifest.process?.identity else {
                throw CheckpointError.treeChanged(root: root, "process \(manifest.pid) could not be read for its parentage")
            }
            members.append(TreeManifest.Member(pid: manifest.pid, parent: identity.ppid, session: identity.session,
                                               processGroup: identity.processGroup, image: String(manifest.pid), imageId: manifest.id))
        }
        let pids = Set(manifests.map(\.pid))
        for member in members.dropFirst() where !pids.contains(member.parent) {
            throw CheckpointError.treeChanged(root: root, "process \(member.pid) was reparented to \(member.parent)")
        }
        return TreeManifest(root: root, members: members, sharedFiles: sharedFiles(manifests),
                            sharedMemory: sharedMemory(manifests), lonePipes: lonePipes(manifests))
    }

    /// A member that exited is a changed tree: say so, naming it.
    package static func memberFailure(_ error: any Error, root: Int32, pid: Int32) -> any Error {
        if case .targetExited = error as? MitosisError { return CheckpointError.treeChanged(root: root, "process \(pid) exited") }
        if case .noSuchProcess = error as? MitosisError { return CheckpointError.treeChanged(root: root, "process \(pid) exited") }
        if case .zombie = error as? MitosisError { return CheckpointError.treeChanged(root: root, "process \(pid) exited") }
        return error
    }

    /// Descriptors that share an open file description with a descriptor of an earlier member
    /// (kcmp on candidates of the same object only). Sockets and pipe ends are left out: each
    /// is one description, which restore knows by its inode. Only the lowest fd of each
    /// description in a member is listed; the others are dups of it in the member's own record.
    static func sharedFiles(_ manifests: [CheckpointManifest]) -> [TreeManifest.SharedFile] {
        struct Object: Hashable {
            var inode: UInt64
            var device: DeviceNumber?
            var target: String
        }
        var seen: [Object: [(pid: Int32, fd: Int32)]] = [:]
        var shared: [TreeManifest.SharedFile] = []
        for manifest in manifests {
            let dups = Set((manifest.restore?.sharedDescriptions ?? []).map(\.fd))
            var mine: [Object: [(pid: Int32, fd: Int32)]] = [:]
            for descriptor in (manifest.descriptors ?? []).sorted(by: { $0.fd < $1.fd })
            where descriptor.kind != .socket && descriptor.kind != .pipe && !dups.contains(descriptor.fd) {
                let object = Object(inode: descriptor.inode, device: descriptor.device, target: descriptor.target)
                let owner = seen[object, default: []].first { earlier in
                    (try? Kernel.kcmpEqual(earlier.pid, manifest.pid, .file, Int(earlier.fd), Int(descriptor.fd))) == true
                }
                if let owner {
                    shared.append(TreeManifest.SharedFile(pid: manifest.pid, fd: descriptor.fd, owner: owner.pid, ownerFd: owner.fd))
                } else {
                    mine[object, default: []].append((manifest.pid, descriptor.fd))
                }
            }
            for (object, list) in mine { seen[object, default: []] += list }
        }
        return shared
    }

    /// Pipes of which the tree holds one end only, and whose other end no process on this host
    /// holds (every process's descriptors are looked at): nginx's writer of a start-up pipe
    /// whose reader, the process that launched it, has exited. A pipe whose other end is held
    /// outside the tree is not listed, and restore refuses it.
    static func lonePipes(_ manifests: [CheckpointManifest]) -> [UInt64]? {
        let pipes = manifests.flatMap { $0.descriptors ?? [] }.filter { $0.kind == .pipe }
        let oneEnded = Dictionary(grouping: pipes, by: \.inode).filter { Set($0.value.map { $0.flags & 3 }).count == 1 }
        guard !oneEnded.isEmpty else { return nil }
        let members = Set(manifests.map { String($0.pid) })
        var heldElsewhere: Set<UInt64> = []
        for entry in (try? Kernel.listDirectory("/proc")) ?? [] where Int32(entry) != nil && !members.contains(entry) {
            for fd in (try? Kernel.listDirectory("/proc/\(entry)/fd")) ?? [] {
                guard let link = try? Kernel.readLink("/proc/\(entry)/fd/\(fd)"), link.hasPrefix("pipe:[") else { continue }
                if let inode = UInt64(link.dropFirst(6).dropLast()), oneEnded[inode] != nil { heldElsewhere.insert(inode) }
            }
        }
        let lone = oneEnded.keys.filter { !heldElsewhere.contains($0) }.sorted()
        return lone.isEmpty ? nil : lone
    }

    /// Anonymous shared mappings of a later member that map an object an earlier member maps.
    static func sharedMemory(_ manifests: [CheckpointManifest]) -> [TreeManifest.SharedMemory] {
        struct Object: Hashable {
            var device: DeviceNumber
            var inode: UInt64
        }
        var owners: [Object: (pid: Int32, start: UInt64)] = [:]
        var shared: [TreeManifest.SharedMemory] = []
        for manifest in manifests {
            for mapping in manifest.process?.maps ?? [] where mapping.kind == .sharedAnonymous {
                let object = Object(device: mapping.device, inode: mapping.inode)
                if let owner = owners[object], owner.pid != manifest.pid {
                    shared.append(TreeManifest.SharedMemory(pid: manifest.pid, start: mapping.start, owner: owner.pid, ownerStart: owner.start))
                } else if owners[object] == nil {
                    owners[object] = (manifest.pid, mapping.start)
                }
            }
        }
        return shared
    }
}
