import Logging
import MitosisCheckpoint
import MitosisImage
import MitosisKernel
import MitosisModel

/// The epochs of `protect --tree` (Docs/replication.md, "Process trees"): every member of the
/// tree under the root tracked (`TreeSession`), each epoch one checkpoint of all of them at one
/// instant, sent as one tree epoch that the standby commits whole.
///
/// The member set is the session's: when the tree gains or loses a process, the epoch being
/// taken is dropped before anything is sent (every member runs on), the tree's tracking starts
/// again over the members there are then, and the next epoch is a full tree epoch. The root's
/// exit ends protection.
final class TreeEpochs: @unchecked Sendable {  // used by the epoch loop only, one call at a time
    let root: Int32
    private let options: CheckpointOptions
    private let logger: Logger
    /// Nil while the tree changed faster than its tracking could start: the next epoch tries again.
    private var session: TreeSession?
    /// True once the session's last epoch was acknowledged: its tracking holds exactly the pages
    /// written since, so the next epoch can build on it. An epoch that fails, in its capture or
    /// its send, makes the next one full (members whose checkpoint went through no longer track
    /// from the acknowledged epoch).
    private var continues = false

    init(root: Int32, options: CheckpointOptions, logger: Logger) async throws {
        self.root = root
        self.options = options
        self.logger = logger
        session = try await TreeSession(root: root, options: options)
        describe()
    }

    func stop() async { await session?.stop() }

    private func describe() {
        guard let session else { return }
        logger.info("protect: tree of \(root): \(session.members.count) process(es) \(session.members.map(String.init).joined(separator: ", "))")
    }

    /// What an acknowledged tree epoch gave.
    struct Outcome {
        var manifest: TreeManifest
        var frozenMilliseconds: Double
        /// When the members were frozen (the instant of the epoch's state).
        var frozenAt: ContinuousClock.Instant?
    }

    /// What the next tree epoch builds on, given the epoch every standby holds (nil: none in
    /// common): nothing when tracking started again since (a changed tree, a failed send).
    func parent(over held: CommittedEpoch?) -> CommittedEpoch? { continues ? held : nil }

    /// Takes one tree epoch over `parent` (from `parent(over:)`; nil: full) and sends it
    /// through `sink` (made for this epoch and parent). Nil when the tree changed while it was
    /// taken: nothing was sent, and the tree's tracking starts again over the tree as it is now.
    /// `files` gives the epoch's data-file changes from the members' manifests, after the thaw.
    func epoch(sink: ReplicationSink, term: Term, epoch: Epoch, parent: CommittedEpoch?,
               files: @escaping @Sendable ([CheckpointManifest]) throws -> [(FileDelta, [UInt8])]) async throws -> Outcome? {
        guard let session = try await currentSession() else { return nil }
        let members = session.members
        let sinks = members.map { _ in ReplicationSink.member(term: term, epoch: epoch, parent: parent?.epoch ?? .none) }
        let parents: [CheckpointParent?] = members.map { pid in parent.map { .previous(path: "../../\($0.epoch.directoryName)/\(pid)") } }
        let clock = ContinuousClock(), started = clock.now
        // Members whose checkpoint went through track from it, whatever happens to the others:
        // until this epoch is acknowledged, the next one is full.
        continues = false
        let taken: TreeSession.Result
        do {
            taken = try await session.checkpoint(sinks: sinks, parents: parents)
        } catch CheckpointError.treeChanged(_, let what) {
            try await restart(because: what)
            return nil
        }
        let captured = clock.now - started
        let described = TreeEpochMembers(root: root, members: taken.manifest.members.map { .init(pid: $0.pid, parent: $0.parent) })
        let manifests = taken.members.map(\.manifest)
        try await Blocking.run("mitosis-protect-tree") { [sinks] in
            try sink.sendTree(members: described, images: sinks.map { $0.buffered ?? [] }, files: try files(manifests),
                              manifest: taken.manifest, captured: captured)
        }
        continues = true
        return Outcome(manifest: taken.manifest, frozenMilliseconds: taken.frozen.inMilliseconds,
                       frozenAt: taken.members.compactMap(\.frozenAt).min())
    }

    /// The tree changed: tracking stops in every member (each runs on), and starts again over
    /// the tree as it is now (`currentSession`); the next epoch is a full tree epoch.
    private func restart(because what: String) async throws {
        await session?.stop()
        session = nil
        continues = false
        guard ReplicationSession.isAlive(root) else { throw MitosisError.targetExited(root) }
        logger.warning("protect: the tree of \(root) changed (\(what)); every member runs on, and the next epoch is a full tree epoch of the tree as it is then")
        _ = try await currentSession()
    }

    /// The tree's tracking, started over the tree as it is when there is none.
    private func currentSession() async throws -> TreeSession? {
        if let session { return session }
        guard ReplicationSession.isAlive(root) else { throw MitosisError.targetExited(root) }
        do {
            session = try await TreeSession(root: root, options: options)
        } catch CheckpointError.treeChanged(_, let what) {
            logger.warning("protect: the tree of \(root) changed while its tracking started (\(what)); trying again at the next epoch")
            return nil
        } catch let error as MitosisError where error.goneProcess == root {
            throw MitosisError.targetExited(root)
        }
        describe()
        return session
    }
}
