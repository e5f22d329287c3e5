import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Dirty tracking on every member of a process tree, and checkpoints of the whole tree at one
/// instant (`protect --tree`, Docs/replication.md "Process trees"): one `CheckpointSession` per
/// member, each pre-copying on its own, then the members frozen together (`TreeFreeze`), each
/// one's frozen part taken, and all thawed together.
///
/// The member set is fixed when the session starts: a checkpoint of a tree that gained or lost
/// a process fails with `CheckpointError.treeChanged` and leaves every member running; a new
/// session over the tree as it is then is the caller's answer.
package final class TreeSession: Sendable {
    package let root: Int32
    /// The members, top-down (parents before their children), the root first.
    package let members: [Int32]
    private let sessions: [CheckpointSession]

    /// What one checkpoint of the tree gave: each member's result (in `members`' order), the
    /// tree's manifest, and how long the tree was frozen as a whole.
    package struct Result: Sendable {
        package var members: [CheckpointResult]
        package var manifest: TreeManifest
        package var frozen: Duration
    }

    /// Starts tracking every member of the tree of `root`.
    package init(root: Int32, options: CheckpointOptions) async throws {
        let pids = Kernel.processTree(root: root)
        guard pids.first == root else { throw MitosisError.noSuchProcess(root) }
        var sessions: [CheckpointSession] = []
        for pid in pids {
            do { sessions.append(try await CheckpointSession(pid: pid, options: options)) } catch {
                for session in sessions { await session.stop() }
                throw TreeCheckpoint.memberFailure(error, root: root, pid: pid)
            }
        }
        self.root = root
        members = pids
        self.sessions = sessions
    }

    /// Checkpoints every member into its sink, over its parent (nil: full), frozen together.
    /// On failure every sink has been aborted and every member runs on.
    package func checkpoint(sinks: [any CheckpointSink], parents: [CheckpointParent?]) async throws -> Result {
        precondition(sinks.count == sessions.count && parents.count == sessions.count)
        let freeze = TreeFreeze(root: root, members: members)
        let results = try await withThrowingTaskGroup(of: (Int, CheckpointResult).self) { group in
            for (index, session) in sessions.enumerated() {
                let sink = sinks[index], parent = parents[index], root = root, pid = members[index]
                group.addTask {
                    do { return (index, try await session.checkpoint(to: sink, parent: parent, freeze: freeze)) } catch {
                        throw TreeCheckpoint.memberFailure(error, root: root, pid: pid)
                    }
                }
            }
            var results = [CheckpointResult?](repeating: nil, count: sessions.count)
            do {
                for try await (index, result) in group { results[index] = result }
            } catch {
                // The members still waiting for the freeze stop waiting; those past it end on their own.
                await freeze.fail(error)
                group.cancelAll()
                while (try? await group.next()) != nil {}
                // A member that exited mid-checkpoint fails it in many ways (its restore record
                // cut short, say): the cause is the tree's change, said as such.
                try TreeCheckpoint.requireUnchanged(root: root, pids: members)
                throw error
            }
            return results.map { $0! }
        }
        let manifest = try TreeCheckpoint.manifest(root: root, members: results.map(\.manifest))
        return Result(members: results, manifest: manifest, frozen: await freeze.frozenFor)
    }

    /// Stops tracking in every member.
    package func stop() async {
        for session in sessions { await session.stop() }
    }
}

/// Freezes the members of a tree together: each member's checkpoint arrives here when its
/// pre-copy is done; once all have, every member is frozen (each by a tracer of its own, top-down),
/// the tree is checked to be exactly these members (all stopped: none can fork or exit now),
/// each member's frozen part runs, and once every one has finished, all are thawed. The
/// images are therefore of one instant: from the last member's freeze to the first thaw, no
/// member ran.
package final class TreeFreeze: Sendable {
    private let gate: Gate

    package init(root: Int32, members: [Int32]) {
        gate = Gate(root: root, members: members)
    }

    /// Runs `body` with `pid` frozen: on its own (`withFrozenProcess`) without `freeze`, else
    /// with the whole tree.
    static func frozen<T: Sendable>(_ pid: Int32, by freeze: TreeFreeze?, isolation: isolated (any Actor)? = #isolation,
                                    _ body: (Tracer) async throws -> T) async throws -> T {
        guard let freeze else { return try await withFrozenProcess(pid, isolation: isolation, body) }
        let tracer = try await freeze.gate.arrive(pid)
        let result: Swift.Result<T, any Error>
        do { result = .success(try await body(tracer)) } catch { result = .failure(error) }
        await freeze.gate.done(pid)
        return try result.get()
    }

    /// A member failed before the freeze: the others stop waiting for it.
    package func fail(_ error: any Error) async { await gate.fail(error) }

    /// From the first member's freeze to the thaw of the last.
    package var frozenFor: Duration { get async { await gate.frozenFor } }

    private actor Gate {
        let root: Int32
        let members: [Int32]
        private var waiting: [Int32: CheckedContinuation<Tracer, any Error>] = [:]
        private var tracers: [Int32: Tracer] = [:]
        private var finished: [CheckedContinuation<Void, Never>] = []
        private var done = 0
        private var failure: (any Error)?
        private var frozenAt: ContinuousClock.Instant?
        private(set) var frozenFor = Duration.zero

        init(root: Int32, members: [Int32]) {
            self.root = root
            self.members = members
        }

        func arrive(_ pid: Int32) async throws -> Tracer {
            if let failure { throw failure }
            return try await withCheckedThrowingContinuation { continuation in
                waiting[pid] = continuation
                if waiting.count == members.count { Task { await self.freezeAll() } }
            }
        }

        private func freezeAll() async {
            var frozen: [Int32: Tracer] = [:]
            frozenAt = ContinuousClock.now
            var current = root
            do {
                for pid in members {
                    current = pid
                    frozen[pid] = try await Tracer.freeze(pid: pid)
                }
                try TreeCheckpoint.requireUnchanged(root: root, pids: members)
            } catch {
                for tracer in frozen.values { await tracer.thaw() }
                fail(TreeCheckpoint.memberFailure(error, root: root, pid: current))
                return
            }
            tracers = frozen
            let resumed = waiting
            waiting = [:]
            for (pid, continuation) in resumed { continuation.resume(returning: frozen[pid]!) }
        }

        func fail(_ error: any Error) {
            if failure == nil { failure = error }
            let resumed = waiting
            waiting = [:]
            for continuation in resumed.values { continuation.resume(throwing: error) }
        }

        /// A member's frozen part ended: waits until every member's has, then all are thawed.
        func done(_ pid: Int32) async {
            done += 1
            if done < tracers.count {
                await withCheckedContinuation { finished.append($0) }
                return
            }
            for pid in members.reversed() { await tracers[pid]?.thaw() }
            if let frozenAt { frozenFor = ContinuousClock.now - frozenAt }
            tracers = [:]
            let resumed = finished
            finished = []
            for continuation in resumed { continuation.resume() }
        }
    }
}
