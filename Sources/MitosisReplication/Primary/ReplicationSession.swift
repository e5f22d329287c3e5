import Foundation
import Logging
import MitosisCheckpoint
import MitosisImage
import MitosisKernel
import MitosisModel
import NIOConcurrencyHelpers
import ServiceLifecycle

/// A standby's replication address.
public struct StandbyEndpoint: Sendable, Equatable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// How a process is protected.
public struct ProtectOptions: Sendable {
    /// The standbys: every epoch goes to each one connected (Docs/replication.md, "Several
    /// standbys").
    public var standbys: [StandbyEndpoint]
    /// The first standby's address.
    public var host: String { standbys.first?.host ?? "" }
    public var port: Int { standbys.first?.port ?? 0 }
    /// Time between the starts of two epochs, kept as a fixed rate (an epoch that ran long is
    /// followed at once by the next); an epoch waits for the previous one's acknowledgements,
    /// so a slow standby makes epochs longer.
    public var interval: Duration = .milliseconds(50)
    /// This primary's term (the failover layer's leader revision); a standby that has seen a
    /// newer one refuses it, and protection stops.
    public var term = Term(1)
    /// Directories whose regular files are part of each epoch, beside the files the process
    /// holds open for writing.
    public var dataDirectories: [String] = []
    /// Ship the files the process holds open for writing.
    public var shipOpenFiles = true
    /// How long to wait for a standby's acknowledgement (a standby that takes longer is left
    /// out and resynchronised), and between connection attempts.
    public var acknowledgementTimeout: Duration = .seconds(60)
    public var reconnectDelay: Duration = .milliseconds(500)
    public var checkpoint = CheckpointOptions()
    /// Stop after this many acknowledged epochs (nil: until cancelled or the process exits).
    public var epochLimit: Int?
    /// How many of the last epochs sent are remembered (their page ranges and data-file hashes,
    /// kilobytes each), so that standbys that reconnect at one of them are resynchronised with
    /// the pages changed since rather than a full base (`EpochHistory`). 0: a full base always.
    public var historyEpochs = 64
    /// Protect the process and every process below it as one tree (`protect --tree`): each
    /// epoch freezes all members together and is committed whole on the standby
    /// (Docs/replication.md, "Process trees"). The data files of every member are shipped with the tree epoch.
    public var tree = false

    public init(host: String, port: Int) {
        standbys = [StandbyEndpoint(host: host, port: port)]
    }

    public init(standbys: [StandbyEndpoint]) {
        self.standbys = standbys
    }
}

/// What protection has done so far: epochs, freezes, lag, bytes.
public struct ReplicationStatistics: Sendable, Equatable {
    /// The newest acknowledged epoch.
    public var acknowledged: CommittedEpoch?
    public var epochs = 0
    public var fullEpochs = 0
    public var bytesSent: UInt64 = 0
    /// Whether at least one standby is connected, and which ones are.
    public var connected = false
    public var connectedStandbys: [String] = []
    public var reconnects = 0
    /// Epochs whose TCP connections were captured under the network lock, which drops the
    /// clients' packets while it holds (`CheckpointResult.connectionsLocked`): only when a
    /// connection changed during the capture without it.
    public var lockedEpochs = 0
    public var lastError: String?
    /// Per epoch, most recent last (bounded): how long the process was frozen, and how long
    /// from its freeze — the instant whose state it holds — until the standby acknowledged it
    /// (the lag: how old the standby's newest state is when it becomes the newest).
    public var freezeMilliseconds: [Double] = []
    public var lagMilliseconds: [Double] = []
    /// Where the time of the recent epochs went (`EpochPhases.primaryNames`, `checkpointNames`).
    public var phases = PhaseHistory()

    mutating func record(freeze: Double, lag: Double) {
        freezeMilliseconds.append(freeze)
        lagMilliseconds.append(lag)
        if freezeMilliseconds.count > 65536 {
            freezeMilliseconds.removeFirst(16384)
            lagMilliseconds.removeFirst(16384)
        }
    }

    /// The `p`-th percentile (0…100) of `values`, nearest rank; nil when empty.
    public static func percentile(_ values: [Double], _ p: Double) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count - 1, max(0, rank - 1))]
    }
}

/// The primary side of replication, as a service: tracks the process's writes, takes an epoch
/// every interval and streams it to every connected standby, one epoch in flight
/// (Docs/replication.md).
///
/// The next freeze waits for the previous epoch's acknowledgement by every connected standby
/// while dirty tracking goes on accumulating. A standby that cannot be reached or fails never
/// harms the process, nor the other standbys: it is left out, reconnected in the background,
/// and resumes with the pages changed since its newest committed epoch when that is the epoch
/// this session last had acknowledged, with a full base (for every standby) otherwise.
/// Returns when the process exits, or throws when a standby has seen a newer term.
public final class ReplicationSession: Service, Sendable {
    public let pid: Int32
    public let options: ProtectOptions
    private let logger: Logger
    private let box = NIOLockedValueBox(ReplicationStatistics())
    private let board = LinkBoard()
    private let metrics = ProtectMetrics()

    public init(pid: Int32, options: ProtectOptions, logger: Logger = Logger(label: "mitosis.protect")) {
        self.pid = pid
        self.options = options
        self.logger = logger
    }

    public var statistics: ReplicationStatistics { box.withLockedValue { $0 } }

    /// Whether the process still exists and has not exited (a zombie has).
    static func isAlive(_ pid: Int32) -> Bool {
        guard let stat = try? Kernel.readFile("/proc/\(pid)/stat"),
              let parsed = ProcStat(parsing: String(decoding: stat, as: UTF8.self)) else { return false }
        return parsed.state != "Z" && parsed.state != "X"
    }

    /// Changes the set of standbys while the session runs: new ones are connected (and get a
    /// full base), removed ones are disconnected before the next epoch.
    public func setStandbys(_ standbys: [StandbyEndpoint]) {
        board.wanted = standbys
    }

    /// What the epochs are taken of: one process, or a tree.
    private enum Source {
        case process(CheckpointSession)
        case tree(TreeEpochs)

        func stop() async {
            switch self {
            case .process(let session): await session.stop()
            case .tree(let tree): await tree.stop()
            }
        }
    }

    public func run() async throws {
        let files = DataFiles(directories: options.dataDirectories)
        let unacknowledged = Unacknowledged(files: files)
        var checkpointOptions = options.checkpoint
        // A tree's members are frozen together: each one's frozen part reads the sizes again.
        checkpointOptions.whileFrozen = { files.freeze() }
        let source: Source
        if options.tree {
            source = .tree(try await TreeEpochs(root: pid, options: checkpointOptions, logger: logger))
        } else {
            checkpointOptions.beforeFreeze = { [unacknowledged] in try unacknowledged.settle() }
            source = .process(try await CheckpointSession(pid: pid, options: checkpointOptions))
        }
        if board.wanted == nil { board.wanted = options.standbys }
        do {
            try await cancelWhenGracefulShutdown { try await self.protect(source, files, unacknowledged) }
        } catch {
            board.closeAll()
            await source.stop()
            if error is CancellationError { return }
            throw error
        }
        board.closeAll()
        await source.stop()
    }

    /// Keeps one standby connected: whenever the epoch loop holds no connection to it, connects
    /// and hands the connection over. A standby that says another primary exists ends the
    /// session (`board.fatal`). An unstructured task: a connection attempt blocked in the kernel
    /// (up to its timeouts) never holds up the end of the session.
    private func connect(_ endpoint: StandbyEndpoint) async {
        do { try await connecting(endpoint) } catch let error as ReplicationError where error.isNewerPrimary {
            board.fatal = error
        } catch {}
    }

    private func connecting(_ endpoint: StandbyEndpoint) async throws {
        let name = endpoint.description
        var lastFailure = ""
        while !Task.isCancelled {
            if board.needsConnection(name) {
                do {
                    let base = board.base
                    let (connection, state) = try await Blocking.run("mitosis-protect-connect") { [options, pid] in
                        let connection = try PrimaryConnection.connect(host: endpoint.host, port: endpoint.port, timeout: .seconds(2))
                        do {
                            let hello = Hello(pid: pid, node: ProcessInfo.processInfo.hostName, pageSize: CheckpointHeader.systemPageSize,
                                              formatVersion: CheckpointManifest.currentFormatVersion, deltaBase: base, tree: options.tree)
                            try connection.send(ReplicationFrame(.hello, term: options.term, payload: MessageCoding.encode(hello)))
                            let answer = try connection.receive(timeout: .seconds(10))
                            switch answer.type {
                            case .state: return (connection, try MessageCoding.decode(StandbyState.self, answer.payload))
                            case .refuse: throw ReplicationError.refused((try? MessageCoding.decode(Refusal.self, answer.payload)) ?? Refusal(.malformed, "undecodable"))
                            default: throw ReplicationError.protocolViolation("expected the standby's state, got \(answer.type)")
                            }
                        } catch {
                            connection.close()
                            throw error
                        }
                    }
                    if state.term > options.term {
                        connection.close()
                        throw ReplicationError.newerTerm(standby: state.term, ours: options.term)
                    }
                    lastFailure = ""
                    board.offer(name, connection, state)
                } catch let error as ReplicationError where error.isNewerPrimary {
                    throw error
                } catch {
                    if Task.isCancelled { return }
                    let message = "\(error)"
                    if message != lastFailure { logger.warning("protect: standby \(name) unreachable, retrying: \(message)") }
                    lastFailure = message
                    box.withLockedValue { $0.lastError = message }
                }
            }
            try await Task.sleep(for: options.reconnectDelay)
        }
    }

    /// An epoch sent whole, its acknowledgements not yet taken into account (`conclude`).
    private struct Sent {
        let epoch: Epoch
        let sink: ReplicationSink
        let imageID: String
        /// The checkpoint's manifest (nil for a tree epoch, whose history is not kept).
        let manifest: CheckpointManifest?
        /// The data files as the standbys hold them once they commit it.
        let files: [String: DataFiles.Shipped]
        let full: Bool
        /// When the process was frozen for it (the instant of its state).
        let frozenAt: ContinuousClock.Instant
        let freeze: Double
        let checkpointPhases: [String: Double]
        let connectionsLocked: Bool
    }

    private func protect(_ source: Source, _ files: DataFiles, _ unacknowledged: Unacknowledged) async throws {
        let clock = ContinuousClock()
        /// The newest epoch acknowledged (by at least one standby): what an incremental epoch builds on.
        var base: CommittedEpoch?
        var history = EpochHistory(capacity: options.historyEpochs)
        /// The parts of the last epochs' manifests as sent: most of a manifest repeats the one before.
        let manifestMemo = JSONMemo()
        var nextEpoch = Epoch(1)
        /// The connected standbys and the newest epoch each holds.
        var active: [String: (connection: PrimaryConnection, committed: CommittedEpoch?)] = [:]
        var nextStart = clock.now
        var connectors: [StandbyEndpoint: Task<Void, Never>] = [:]
        defer { for task in connectors.values { task.cancel() } }
        func drop(_ name: String, _ why: String) {
            guard active[name] != nil else { return }
            active[name]?.connection.close()
            active[name] = nil
            board.dropped(name)
            logger.warning("protect: standby \(name) left out, reconnecting: \(why)")
        }
        func publish() {
            let names = active.keys.sorted()
            box.withLockedValue { $0.connected = !names.isEmpty; $0.connectedStandbys = names }
            metrics.connected.record(names.count)
        }
        defer { for name in active.keys { active[name]?.connection.close() } }
        /// The epoch sent and not yet concluded: its acknowledgements are collected before the
        /// next freeze (by the next checkpoint's `beforeFreeze`), so that the next pre-copy
        /// overlaps the standbys' commit (Docs/replication.md, "Where an epoch's time goes").
        var pending: Sent?
        /// Takes the acknowledgements of an epoch sent into account: the newest acknowledged
        /// epoch, the history, the statistics; or, when no standby acknowledged it, every
        /// standby is left out and reconnected (resynchronised from the history).
        func conclude(_ sent: Sent) throws {
            let outcome = Result { try sent.sink.settle() }
            let acknowledged = CommittedEpoch(epoch: sent.epoch, imageID: sent.imageID)
            // Sent whole, the epoch may be committed on a standby even when it failed here.
            if let manifest = sent.manifest { history.append(epoch: acknowledged, manifest: manifest, files: sent.files) }
            if case .failure(let error) = outcome {
                if let error = error as? ReplicationError, error.isNewerPrimary { throw error }
                logger.warning("protect: epoch \(sent.epoch) failed, the process runs on; reconnecting: \(error)")
                for (name, failure) in sent.sink.failed { drop(name, "\(failure)") }
                for name in Array(active.keys) { drop(name, "epoch \(sent.epoch) failed") }
                publish()
                box.withLockedValue { $0.lastError = "\(error)" }
                metrics.failures.increment()
                nextEpoch = sent.epoch
                // The checkpoint session took the epoch as done: the next one cannot build on
                // `base` as its previous; the standbys are resynchronised from the history.
                base = nil
                return
            }
            for (name, failure) in sent.sink.failed { drop(name, "epoch \(sent.epoch): \(failure)") }
            for name in sent.sink.acknowledgedBy { active[name]?.committed = acknowledged }
            publish()
            base = acknowledged
            board.base = acknowledged
            let lag = ((sent.sink.acknowledgedAt ?? clock.now) - sent.frozenAt).inMilliseconds
            box.withLockedValue {
                $0.acknowledged = acknowledged
                $0.epochs += 1
                if sent.full { $0.fullEpochs += 1 }
                if sent.connectionsLocked { $0.lockedEpochs += 1 }
                $0.bytesSent += sent.sink.bytesSent
                $0.record(freeze: sent.freeze, lag: lag)
                var phases = sent.sink.phases
                phases["freeze"] = sent.freeze
                phases.values.merge(sent.checkpointPhases) { first, _ in first }
                $0.phases.append(phases)
            }
            metrics.acknowledged(epoch: sent.epoch, full: sent.full, bytes: sent.sink.bytesSent, freeze: sent.freeze, lag: lag,
                                 interval: options.interval.inMilliseconds)
            logger.debug("protect: epoch \(sent.epoch) acknowledged by \(sent.sink.acknowledgedBy.sorted().joined(separator: ", ")): frozen \(sent.freeze) ms, lag \(lag) ms, \(sent.sink.bytesSent) bytes")
        }
        /// Waits for the pending epoch's acknowledgements (unless the next checkpoint did) and concludes it.
        func concludePending() async throws {
            guard let sent = pending else { return }
            pending = nil
            if !sent.sink.isSettled {
                unacknowledged.set(sent.sink)
                _ = try? await Blocking.run("mitosis-protect-ack") { try unacknowledged.settle() }
            }
            unacknowledged.set(nil)
            try conclude(sent)
        }
        while !Task.isCancelled {
            if let fatal = board.fatal { throw fatal }
            let wanted = Set(board.wanted ?? [])
            for endpoint in wanted where connectors[endpoint] == nil {
                connectors[endpoint] = Task { await self.connect(endpoint) }
            }
            let offered = board.takeOffered()
            // The next epoch builds on the pending one only in the steady state: the same
            // standbys, none failed while it was sent, no epoch limit reached. Otherwise its
            // acknowledgements are awaited first, and the next epoch decided as before.
            if let sent = pending {
                let steady = offered.isEmpty && connectors.keys.allSatisfy(wanted.contains) && sent.sink.failed.isEmpty
                    && Set(active.keys) == Set(sent.sink.targetNames) && options.epochLimit.map { statistics.epochs + 1 < $0 } ?? true
                if !steady { try await concludePending() }
            }
            for (endpoint, task) in connectors where !wanted.contains(endpoint) {
                task.cancel()
                connectors[endpoint] = nil
                if active[endpoint.description] != nil { drop(endpoint.description, "no longer a standby") }
                board.dropped(endpoint.description)
            }
            for (name, connection, state) in offered {
                guard wanted.contains(where: { $0.description == name }) else {
                    connection.close()
                    board.dropped(name)
                    continue
                }
                if let committed = state.committed, committed.epoch >= nextEpoch { nextEpoch = committed.epoch.next }
                let continues = base != nil && state.committed == base
                let plan = continues ? "the changes since epoch \(base!.epoch)"
                    : state.committed.flatMap { history.entry($0) }.map { "the changes since epoch \($0.epoch.epoch) (resynchronising from the history, \(history.count(after: $0.epoch)) epoch(s) sent since)" }
                    ?? "a full base"
                logger.info("protect: connected to \(name), standby at epoch \(state.committed?.epoch.description ?? "none"); sending \(plan)")
                active[name] = (connection, state.committed)
                box.withLockedValue { $0.reconnects += 1; $0.lastError = nil }
                metrics.reconnects.increment()
            }
            publish()
            if let limit = options.epochLimit, statistics.epochs >= limit { return }
            guard !active.isEmpty else {
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            try await Task.sleep(until: nextStart, clock: clock)
            let started = clock.now
            // Epochs are due at a fixed rate, one every interval: after epochs that ran past
            // their interval the next ones start at once until the count has caught up, at
            // most a second (or one interval, if longer) behind; later than that (after a
            // reconnection, say) the count starts again.
            let catchUp = max(options.interval, .seconds(1))
            nextStart = (started - nextStart > catchUp ? started : nextStart) + options.interval
            let epoch = nextEpoch
            // One checkpoint for every standby: incremental when all of them hold the base (or
            // will once they acknowledge the pending epoch, which every one of them was sent).
            let parent = pending.map { CommittedEpoch(epoch: $0.epoch, imageID: $0.imageID) }
                ?? base.flatMap { base in active.values.allSatisfy { $0.committed == base } ? base : nil }
            // Otherwise, every standby at one epoch still in the history: the pages changed since
            // it, and its data files as the standbys hold them.
            var resync: EpochHistory.Entry?
            if let parent, let entry = history.entry(parent) {
                // What the standbys hold of the data files is the base's (a failed resync may have
                // left the files' state at an older epoch).
                files.restore(entry.files)
            } else if parent == nil, let first = active.values.first?.committed, active.values.allSatisfy({ $0.committed == first }),
               let entry = history.entry(first) {
                resync = entry
                files.restore(entry.files)
            }
            // A tree's history is not kept: only its last acknowledged epoch is built on.
            var treeParent: CommittedEpoch?
            if case .tree(let tree) = source { treeParent = tree.parent(over: parent) }
            let full = if case .tree = source { treeParent == nil } else { parent == nil && resync == nil }
            let sinkParent = if case .tree = source { treeParent?.epoch ?? .none } else { parent?.epoch ?? resync?.epoch.epoch ?? .none }
            let isTree = if case .tree = source { true } else { false }
            let sink = ReplicationSink(targets: active.map { ($0.key, $0.value.connection) }, term: options.term, epoch: epoch,
                                       parent: sinkParent, acknowledgementTimeout: options.acknowledgementTimeout,
                                       deferred: !isTree, manifestMemo: isTree ? nil : manifestMemo) { [shipOpenFiles = options.shipOpenFiles] manifest in
                // In the sink's finish, after the thaw, up to the sizes read at the freeze.
                try files.deltas(full: full, of: [manifest], shipOpenFiles: shipOpenFiles)
            }
            let checkpointParent: CheckpointParent? = if let resync {
                .earlier(id: resync.epoch.imageID, sequence: resync.sequence, path: "../" + resync.epoch.epoch.directoryName,
                         changedSince: history.changed(after: resync.epoch))
            } else {
                parent.map { .previous(path: "../" + $0.epoch.directoryName) }
            }
            var result: CheckpointResult?
            var treeEpoch: TreeEpochs.Outcome?
            unacknowledged.set(pending?.sink, next: sink)
            do {
                do {
                    switch source {
                    case .process(let session):
                        result = try await session.checkpoint(to: sink, parent: checkpointParent)
                    case .tree(let tree):
                        // Nil: the tree changed and nothing was sent; the next epoch is a full one.
                        guard let outcome = try await tree.epoch(sink: sink, term: options.term, epoch: epoch, parent: treeParent, files: { [shipOpenFiles = options.shipOpenFiles] manifests in
                            try files.deltas(full: full, of: manifests, shipOpenFiles: shipOpenFiles)
                        }) else { continue }
                        treeEpoch = outcome
                    }
                } catch {
                    // The epoch this one built on first (its acknowledgements may be what failed).
                    if !(error is CancellationError) { try await concludePending() }
                    // Sent whole, the epoch may be committed on a standby even though it failed here.
                    if let sent = sink.sentManifest {
                        history.append(epoch: CommittedEpoch(epoch: epoch, imageID: sent.id), manifest: sent, files: files.pendingState)
                    }
                    throw error
                }
            } catch let error as MitosisError where error.goneProcess != nil {
                files.failed()
                logger.info("protect: process \(pid) exited; protection ends")
                return
            } catch let error as ReplicationError where error.isNewerPrimary {
                files.failed()
                throw error
            } catch is CancellationError {
                files.failed()
                return
            } catch {
                files.failed()
                if Task.isCancelled { return }
                if !Self.isAlive(pid) {
                    logger.info("protect: process \(pid) exited; protection ends")
                    return
                }
                let message = "\(error)"
                logger.warning("protect: epoch \(epoch) failed, the process runs on; reconnecting: \(message)")
                for (name, failure) in sink.failed { drop(name, "\(failure)") }
                for name in Array(active.keys) { drop(name, "epoch \(epoch) failed") }
                publish()
                box.withLockedValue { $0.lastError = message }
                metrics.failures.increment()
                try await Task.sleep(for: options.reconnectDelay)
                continue
            }
            // The pending epoch was acknowledged before this one's freeze (`beforeFreeze`).
            try await concludePending()
            nextEpoch = epoch.next
            let sent = Sent(epoch: epoch, sink: sink, imageID: result?.manifest.id ?? treeEpoch?.manifest.id ?? "", manifest: result?.manifest,
                            files: files.pendingState, full: full, frozenAt: result?.frozenAt ?? treeEpoch?.frozenAt ?? started,
                            freeze: result.map { Double($0.stats.frozenNanoseconds) / 1e6 } ?? treeEpoch?.frozenMilliseconds ?? 0,
                            checkpointPhases: result?.phases ?? [:], connectionsLocked: result?.connectionsLocked ?? false)
            if isTree {
                // A tree epoch's sink collected its acknowledgements before returning.
                files.acknowledged()
                try conclude(sent)
            } else {
                pending = sent
                unacknowledged.set(sink)
            }
        }
    }
}

/// The epoch sent and not yet acknowledged, as the next checkpoint's `beforeFreeze` sees it:
/// its acknowledgements are collected there, right before the freeze, and its data files then
/// become what the standbys hold (the next epoch's changes are computed against them).
private final class Unacknowledged: Sendable {
    private let files: DataFiles
    private let state = NIOLockedValueBox<(sent: ReplicationSink?, next: ReplicationSink?)>((nil, nil))

    init(files: DataFiles) { self.files = files }

    /// `sent`: the epoch in flight (nil: none); `next`: the epoch being taken over it.
    func set(_ sent: ReplicationSink?, next: ReplicationSink? = nil) {
        state.withLockedValue { $0 = (sent, next) }
    }

    /// Collects the acknowledgements of the epoch in flight, once; returns whether it waited
    /// for them (the checkpoint then runs more pre-copy rounds: pages were written meanwhile;
    /// when every answer was already in, it freezes right away). The standbys that failed it
    /// are left out of the next epoch; throws when none acknowledged it (the next checkpoint
    /// then fails before its freeze).
    func settle() throws -> Bool {
        let (sent, next) = state.withLockedValue { state in
            defer { state.sent = nil }
            return state
        }
        guard let sent else { return false }
        let waited = !sent.answered
        do {
            try sent.settle()
        } catch {
            files.failed()
            throw error
        }
        files.acknowledged()
        let failed = Set(sent.failed.map(\.name))
        if !failed.isEmpty { try next?.leaveOut(failed, because: "it failed the epoch this one builds on") }
        return waited
    }
}

/// What the connectors and the epoch loop share: connections made and not yet taken, which
/// standbys the loop holds, and the newest acknowledged epoch (for the hello).
private final class LinkBoard: Sendable {
    private struct State {
        var offered: [(String, PrimaryConnection, StandbyState)] = []
        var held: Set<String> = []
        var base: CommittedEpoch?
        var wanted: [StandbyEndpoint]?
        var fatal: ReplicationError?
        var closed = false
    }

    private let state = NIOLockedValueBox(State())

    var base: CommittedEpoch? {
        get { state.withLockedValue { $0.base } }
        set { state.withLockedValue { $0.base = newValue } }
    }

    var wanted: [StandbyEndpoint]? {
        get { state.withLockedValue { $0.wanted } }
        set { state.withLockedValue { $0.wanted = newValue } }
    }

    var fatal: ReplicationError? {
        get { state.withLockedValue { $0.fatal } }
        set { state.withLockedValue { $0.fatal = newValue } }
    }

    func needsConnection(_ name: String) -> Bool { state.withLockedValue { !$0.closed && !$0.held.contains(name) } }

    func offer(_ name: String, _ connection: PrimaryConnection, _ standby: StandbyState) {
        let accepted = state.withLockedValue { state -> Bool in
            guard !state.closed, !state.held.contains(name) else { return false }
            state.held.insert(name)
            state.offered.append((name, connection, standby))
            return true
        }
        if !accepted { connection.close() }
    }

    func takeOffered() -> [(String, PrimaryConnection, StandbyState)] {
        state.withLockedValue { state in
            defer { state.offered = [] }
            return state.offered
        }
    }

    func dropped(_ name: String) { state.withLockedValue { _ = $0.held.remove(name) } }

    /// The session ends: connections offered and never taken are closed.
    func closeAll() {
        let left = state.withLockedValue { state in
            state.closed = true
            defer { state.offered = [] }
            return state.offered
        }
        for (_, connection, _) in left { connection.close() }
    }
}
