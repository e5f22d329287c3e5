import Foundation
import Logging
import MitosisCheckpoint
import MitosisImage
import MitosisKernel
import MitosisModel
import NIOConcurrencyHelpers
import ServiceLifecycle

/// How a process is protected.
public struct ProtectOptions: Sendable {
    /// The standby's address.
    public var host: String
    public var port: Int
    /// Time between the starts of two epochs (an epoch waits for the previous one's
    /// acknowledgement, so a slow standby makes epochs longer).
    public var interval: Duration = .milliseconds(50)
    /// This primary's term (the failover layer's leader revision); a standby that has seen a
    /// newer one refuses it, and protection stops.
    public var term = Term(1)
    /// Directories whose regular files are part of each epoch, beside the files the process
    /// holds open for writing.
    public var dataDirectories: [String] = []
    /// Ship the files the process holds open for writing.
    public var shipOpenFiles = true
    /// How long to wait for an acknowledgement, and between connection attempts.
    public var acknowledgementTimeout: Duration = .seconds(60)
    public var reconnectDelay: Duration = .milliseconds(500)
    public var checkpoint = CheckpointOptions()
    /// Stop after this many acknowledged epochs (nil: until cancelled or the process exits).
    public var epochLimit: Int?
    /// How many of the last epochs sent are remembered (their page ranges and data-file hashes,
    /// kilobytes each), so that a standby that reconnects at one of them is resynchronised with
    /// the pages changed since rather than a full base (`EpochHistory`). 0: a full base always.
    public var historyEpochs = 64

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}

/// What protection has done so far: epochs, freezes, lag, bytes.
public struct ReplicationStatistics: Sendable, Equatable {
    /// The newest acknowledged epoch.
    public var acknowledged: CommittedEpoch?
    public var epochs = 0
    public var fullEpochs = 0
    public var bytesSent: UInt64 = 0
    public var connected = false
    public var reconnects = 0
    public var lastError: String?
    /// Per epoch, most recent last (bounded): how long the process was frozen, and how long
    /// from the start of its checkpoint until the standby acknowledged it (the lag).
    public var freezeMilliseconds: [Double] = []
    public var lagMilliseconds: [Double] = []
    /// Where the time of the recent epochs went (`EpochPhases.primaryNames`).
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
/// every interval and streams it to the standby, one epoch in flight (Docs/replication.md).
///
/// The next freeze waits for the previous epoch's acknowledgement while dirty tracking goes on
/// accumulating. A standby that cannot be reached or fails never harms the process: protection
/// reconnects, and resumes with the pages changed since the standby's newest committed epoch
/// when that is the epoch this session last had acknowledged, with a full base otherwise.
/// Returns when the process exits, or throws when a standby has seen a newer term.
public final class ReplicationSession: Service, Sendable {
    public let pid: Int32
    public let options: ProtectOptions
    private let logger: Logger
    private let box = NIOLockedValueBox(ReplicationStatistics())
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

    public func run() async throws {
        let files = DataFiles(directories: options.dataDirectories)
        var checkpointOptions = options.checkpoint
        checkpointOptions.whileFrozen = { files.freeze() }
        let session = try await CheckpointSession(pid: pid, options: checkpointOptions)
        do {
            try await cancelWhenGracefulShutdown { try await self.protect(session, files) }
        } catch {
            await session.stop()
            if error is CancellationError { return }
            throw error
        }
        await session.stop()
    }

    private func protect(_ session: CheckpointSession, _ files: DataFiles) async throws {
        let clock = ContinuousClock()
        var base: CommittedEpoch?
        var history = EpochHistory(capacity: options.historyEpochs)
        var nextEpoch = Epoch(1)
        var lastFailure = ""
        while !Task.isCancelled {
            let connection: PrimaryConnection
            let state: StandbyState
            do {
                (connection, state) = try await Blocking.run("mitosis-protect-connect") { [options, pid, base] in
                    let connection = try PrimaryConnection.connect(host: options.host, port: options.port, timeout: .seconds(5))
                    do {
                        let hello = Hello(pid: pid, node: ProcessInfo.processInfo.hostName, pageSize: CheckpointHeader.systemPageSize,
                                          formatVersion: CheckpointManifest.currentFormatVersion, deltaBase: base)
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
            } catch let ReplicationError.refused(refusal) where refusal.code == .olderTerm || refusal.code == .promoted {
                throw ReplicationError.refused(refusal)
            } catch {
                let message = "\(error)"
                if message != lastFailure { logger.warning("protect: standby \(options.host):\(options.port) unreachable, retrying: \(message)") }
                lastFailure = message
                box.withLockedValue { $0.connected = false; $0.lastError = message }
                metrics.connected.record(0)
                try await Task.sleep(for: options.reconnectDelay)
                continue
            }
            lastFailure = ""
            if state.term > options.term {
                connection.close()
                throw ReplicationError.newerTerm(standby: state.term, ours: options.term)
            }
            if let committed = state.committed, committed.epoch >= nextEpoch { nextEpoch = committed.epoch.next }
            var parent = (base != nil && state.committed == base) ? base : nil
            // A standby behind (or ahead of) the last acknowledged epoch, at an epoch still in
            // the history: the pages changed since that epoch, and its data files as it holds them.
            var resync: EpochHistory.Entry?
            if parent == nil, let committed = state.committed, let entry = history.entry(committed) {
                resync = entry
                parent = committed
                files.restore(entry.files)
            }
            let plan = parent == nil ? "a full base"
                : resync == nil ? "the changes since epoch \(parent!.epoch)"
                : "the changes since epoch \(parent!.epoch) (resynchronising from the history, \(history.count(after: parent!)) epoch(s) sent since)"
            logger.info("protect: connected to \(options.host):\(options.port), standby at epoch \(state.committed?.epoch.description ?? "none"); sending \(plan)")
            box.withLockedValue { $0.connected = true; $0.reconnects += 1; $0.lastError = nil }
            metrics.connected.record(1)
            metrics.reconnects.increment()
            var nextStart = clock.now
            do {
                while !Task.isCancelled {
                    if let limit = options.epochLimit, statistics.epochs >= limit { connection.close(); return }
                    try await Task.sleep(until: nextStart, clock: clock)
                    let started = clock.now
                    nextStart = started + options.interval
                    let epoch = nextEpoch
                    let full = parent == nil
                    let sink = ReplicationSink(connection: connection, term: options.term, epoch: epoch, parent: parent?.epoch ?? .none,
                                               acknowledgementTimeout: options.acknowledgementTimeout) { [shipOpenFiles = options.shipOpenFiles] manifest in
                        // In the sink's finish, after the thaw, up to the sizes read at the freeze.
                        try files.deltas(full: full, openForWriting: shipOpenFiles ? DataFiles.openForWriting(manifest) : [],
                                         appendOnly: shipOpenFiles ? DataFiles.appendOnly(manifest) : [])
                    }
                    let checkpointParent: CheckpointParent? = if let resync {
                        .earlier(id: resync.epoch.imageID, sequence: resync.sequence, path: "../" + resync.epoch.epoch.directoryName,
                                 changedSince: history.changed(after: resync.epoch))
                    } else {
                        parent.map { .previous(path: "../" + $0.epoch.directoryName) }
                    }
                    let result: CheckpointResult
                    do {
                        result = try await session.checkpoint(to: sink, parent: checkpointParent)
                    } catch {
                        if let sent = sink.sentManifest {
                            history.append(epoch: CommittedEpoch(epoch: epoch, imageID: sent.id), manifest: sent, files: files.pendingState)
                        }
                        files.failed()
                        throw error
                    }
                    history.append(epoch: CommittedEpoch(epoch: epoch, imageID: result.manifest.id), manifest: result.manifest, files: files.pendingState)
                    resync = nil
                    files.acknowledged()
                    let acknowledged = CommittedEpoch(epoch: epoch, imageID: result.manifest.id)
                    base = acknowledged
                    parent = acknowledged
                    nextEpoch = epoch.next
                    let lag = milliseconds(clock.now - started)
                    let freeze = Double(result.stats.frozenNanoseconds) / 1e6
                    box.withLockedValue {
                        $0.acknowledged = acknowledged
                        $0.epochs += 1
                        if full { $0.fullEpochs += 1 }
                        $0.bytesSent += sink.bytesSent
                        $0.record(freeze: freeze, lag: lag)
                        var phases = sink.phases
                        phases["freeze"] = freeze
                        phases.values.merge(result.phases) { first, _ in first }
                        $0.phases.append(phases)
                    }
                    metrics.acknowledged(epoch: epoch, full: full, bytes: sink.bytesSent, freeze: freeze, lag: lag, interval: milliseconds(options.interval))
                    logger.debug("protect: epoch \(epoch) acknowledged: frozen \(freeze) ms, lag \(lag) ms, \(sink.bytesSent) bytes; \(sink.phases.values)")
                }
            } catch let error as MitosisError where error.goneProcess != nil {
                connection.close()
                logger.info("protect: process \(pid) exited; protection ends")
                return
            } catch let ReplicationError.refused(refusal) where refusal.code == .olderTerm || refusal.code == .promoted {
                connection.close()
                throw ReplicationError.refused(refusal)
            } catch is CancellationError {
                connection.close()
                return
            } catch {
                connection.close()
                if Task.isCancelled { return }
                if !Self.isAlive(pid) {
                    logger.info("protect: process \(pid) exited; protection ends")
                    return
                }
                let message = "\(error)"
                logger.warning("protect: epoch \(nextEpoch) failed, the process runs on; reconnecting: \(message)")
                box.withLockedValue { $0.connected = false; $0.lastError = message }
                metrics.connected.record(0)
                metrics.failures.increment()
                try await Task.sleep(for: options.reconnectDelay)
            }
        }
    }
}
