import Foundation
import Logging
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisReplication
import MitosisRestore

/// How a node replicates its service (the configuration's `replication` object).
public struct ReplicationSettings: Sendable, Equatable {
    /// This node's standby directory (Docs/replication.md, "Standby directory").
    public var directory: String
    /// Directories whose regular files are part of every epoch (`protect --data`).
    public var dataDirectories: [String] = []
    public var interval: Duration = .milliseconds(50)
    /// A standby that has not acknowledged an epoch within this time is left out and
    /// resynchronised, so that one stalled standby stops the epochs for this long at most.
    public var acknowledgementTimeout: Duration = .seconds(5)

    public init(directory: String) {
        self.directory = directory
    }
}

/// The replica of a service with hot standby (`MitosisReplication`): the failover daemon's
/// `ReplicaControl` when the configuration has a `replication` object.
///
/// - **Standby** (`follow`): a `mitosis standby` child process serving this node's directory
///   on the replication address, started with the leader's term as its minimum (`--term`), so
///   that it refuses a deposed primary's frames before the new primary has said a word. A child
///   process because `Promotion.promote` takes the directory from whoever holds its lock with
///   SIGTERM: inside the daemon, that would be the daemon.
/// - **State**: the newest committed epoch is the newest name in `DIR/epochs` (an epoch gets its
///   name only once committed), read at each call: the election compares exact epochs. The
///   term is `DIR/TERM`; readiness is the restore check of the newest epoch (`Restorer.refusals`),
///   at most once a second.
/// - **Promote**: `Promotion.promote` on the directory (`promoteDirectory`, the one call site),
///   which stops the standby child, writes the data files and restores the process with its pid.
///   A fresh cluster (no epoch anywhere, no term ever seen) starts the service's command instead.
/// - **Protect**: one `ReplicationSession` onto every standby of the cluster; a change of the
///   set of standbys is applied to the running session (`setStandbys`).
/// - **Fence**: SIGSTOP to the service, the session cancelled. **Discard**: the service
///   killed, the directory emptied (a full resync follows).
public final class HotReplica: ReplicaControl, @unchecked Sendable {
    public let settings: ReplicationSettings
    /// The service's command, used only to start a fresh cluster.
    public let command: [String]
    private let listen: String
    private let executable: String
    private let directory: StandbyDirectory
    private let logger: Logger
    private let lock = NSLock()

    private struct StandbyChild {
        var process: ChildProcess
        var term: Int64
        var started: ContinuousClock.Instant
    }

    private struct Readiness {
        var epoch: Epoch
        var ready: Bool
        var reason: String?
        var checked: ContinuousClock.Instant
    }

    private var standby: StandbyChild?
    /// The running service: its pid, and the child when this node started it by its command.
    private var service: (pid: Int32, started: ChildProcess?)?
    private var session: (session: ReplicationSession, task: Task<Void, Never>, term: Int64)?
    private var term: Int64 = 0
    private var readiness: Readiness?
    /// What the last promotion did (for logs, status and the failover benchmark).
    public private(set) var lastPromotion: PromotionResult?

    private static let spawner = DedicatedThreadExecutor(name: "mitosis-cluster-replica")

    /// `listen` is this node's replication address (HOST:PORT); `executable` the `mitosis`
    /// binary that runs the standby (this process's own by default).
    public init(settings: ReplicationSettings, command: [String], listen: String, executable: String? = nil, logger: Logger) {
        self.settings = settings
        self.command = command
        self.listen = listen
        self.executable = executable ?? ((try? Kernel.readLink("/proc/self/exe")) ?? "/usr/bin/mitosis")
        directory = StandbyDirectory(settings.directory)
        self.logger = logger
    }

    // MARK: ReplicaControl

    public func state() async -> ReplicaState {
        let (service, session, term) = lock.withLock { (self.service, self.session, self.term) }
        if let service {
            let statistics = session?.session.statistics
            let epoch = Int64(statistics?.acknowledged?.epoch.rawValue ?? lastPromotion.map { $0.epoch.rawValue } ?? 0)
            let standbys = statistics?.connectedStandbys ?? []
            return ReplicaState(term: term, epoch: epoch, ready: true,
                                reason: "primary: pid \(service.pid), epochs to \(standbys.isEmpty ? "no standby" : standbys.joined(separator: ", "))")
        }
        await restartStandbyIfExited()
        let directoryTerm = Int64(directory.readTerm().rawValue)
        guard let newest = newestEpoch() else {
            if directoryTerm == 0 && term == 0 {
                return ReplicaState(term: 0, epoch: 0, ready: true, reason: "fresh cluster: no epoch anywhere yet, would start \(command.first ?? "?")")
            }
            return ReplicaState(term: max(term, directoryTerm), epoch: 0, ready: false, reason: "no epoch received yet")
        }
        let checked = await readiness(of: newest)
        return ReplicaState(term: max(term, directoryTerm), epoch: Int64(newest.rawValue), ready: checked.ready, reason: checked.reason)
    }

    public func follow(leader: String, term: Int64) async throws {
        let running = lock.withLock { () -> StandbyChild? in
            self.term = max(self.term, term)
            return standby
        }
        if let running, running.process.isRunning, running.term >= term { return }
        await stopStandby()
        if directory.isPromoted {
            // This node's service was promoted from the directory earlier and is gone now:
            // another node leads, so what the directory holds is history.
            logger.info("standby directory \(directory.path) was promoted before: emptied for a full resync")
            emptyDirectory()
        }
        try startStandby(term: term)
    }

    public func promote(term: Int64) async throws {
        lock.withLock { self.term = max(self.term, term) }
        if newestEpoch() == nil {
            guard directory.readTerm() == Term(0) else {
                throw ClusterError.promotion("no committed epoch in \(directory.path), and it has seen term \(directory.readTerm()): the service ran before, so starting it empty would lose its state")
            }
            await stopStandby()
            try await startFresh()
            return
        }
        let result = try await Self.promoteDirectory(directory.path, logger: logger)
        await stopStandby()
        lock.withLock {
            service = (result.pid, nil)
            lastPromotion = result
            readiness = nil
        }
        logger.notice("promoted epoch \(result.epoch) (taken \(result.created), \(Int(result.ageMilliseconds)) ms before) as pid \(result.pid) in \(Int(result.totalMilliseconds)) ms: standby stopped in \(Int(result.stopStandbyMilliseconds)) ms, \(result.dataFiles) data file(s) in \(Int(result.dataFilesMilliseconds)) ms, restore \(Int(result.restoreMilliseconds)) ms")
    }

    /// The one place a promotion happens: a warm promotion replaces the cold restore behind
    /// `Promotion.promote` without a change here.
    static func promoteDirectory(_ path: String, logger: Logger) async throws -> PromotionResult {
        try await Promotion.promote(directory: path, standbyTimeout: .seconds(5), logger: logger)
    }

    public func protect(term: Int64, standbys: [MemberRecord]) async throws {
        var endpoints: [StandbyEndpoint] = []
        for member in standbys {
            guard let endpoint = EtcdEndpoint(member.replicationAddress) else {
                logger.warning("member \(member.node): replication address \(member.replicationAddress.prefix(80)) is not HOST:PORT; not protected onto")
                continue
            }
            endpoints.append(StandbyEndpoint(host: endpoint.host, port: endpoint.port))
        }
        let (pid, current) = lock.withLock { (self.service?.pid, self.session) }
        guard let pid else { throw ClusterError.promotion("protect without a running service") }
        if let current, current.term == term {
            current.session.setStandbys(endpoints)
            return
        }
        current?.task.cancel()
        await current?.task.value
        var options = ProtectOptions(standbys: endpoints)
        options.term = Term(UInt64(term))
        options.interval = settings.interval
        options.dataDirectories = settings.dataDirectories
        options.acknowledgementTimeout = settings.acknowledgementTimeout
        options.reconnectDelay = .milliseconds(200)
        var sessionLogger = logger
        sessionLogger[metadataKey: "term"] = "\(term)"
        let started = ReplicationSession(pid: pid, options: options, logger: sessionLogger)
        let task = Task { [logger] in
            do {
                try await started.run()
                logger.info("protection of pid \(pid) ended")
            } catch {
                logger.error("protection of pid \(pid) failed: \(error)")
            }
        }
        lock.withLock { self.session = (started, task, term) }
    }

    public func fence() async {
        let (service, session) = lock.withLock { (self.service, self.session) }
        if let service { try? Kernel.sendSignal(pid: service.pid, Linux.SIGSTOP) }
        session?.task.cancel()
    }

    public func resume(term: Int64) async throws {
        guard let pid = lock.withLock({ () -> Int32? in self.term = max(self.term, term); return service?.pid }) else {
            throw ClusterError.promotion("no fenced service to resume")
        }
        // The session of the old term was cancelled at the fence; `protect` starts one at `term`.
        try Kernel.sendSignal(pid: pid, Linux.SIGCONT)
        logger.notice("fenced service resumed: pid \(pid), term \(term)")
    }

    public func discard() async {
        await endService()
        await stopStandby()
        emptyDirectory()
        logger.info("standby directory \(directory.path) emptied: a full resync follows")
    }

    /// The daemon stops: the service (fenced already if it was the primary) is killed, the
    /// standby stopped. The directory stays, so that a restarted node keeps its epochs.
    public func stop() async {
        await endService()
        await stopStandby()
    }

    // MARK: Service

    private func startFresh() async throws {
        let command = self.command
        // The parent-death signal is tied to the thread that started the child: the spawner
        // lives as long as the daemon, so the service dies with a killed daemon.
        let started = try Self.spawner.sync {
            // Descriptors 0–2 only: the daemon's sockets and epolls are none of the service's
            // business (and an inherited epoll watching them would make it unrestorable). Those
            // three are /dev/null, not the daemon's log: a file the service holds open for
            // writing is part of every epoch, and a promotion writes it back over its path, so
            // the daemon's own log would be replaced under it on the new primary's host (seen
            // in `mitosis-bench failover`: the winner's log ended at the epoch's copy). The
            // service logs through its own configuration (redis: `--logfile`).
            try ChildProcess(executable: "/usr/bin/setpriv", arguments: ["--pdeathsig", "KILL", "--"] + command,
                             stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        }
        // A command that dies at once (bad arguments, port taken) is a failed promotion.
        try await Task.sleep(for: .milliseconds(50))
        guard started.isRunning else {
            throw ClusterError.serviceExited(command: command.joined(separator: " "), status: ChildProcess.exitCode(of: started.wait()))
        }
        lock.withLock { service = (started.pid, started) }
        logger.info("fresh cluster: service started by its command: \(command[0]), pid \(started.pid)")
    }

    private func endService() async {
        let (service, session) = lock.withLock { () -> ((pid: Int32, started: ChildProcess?)?, (session: ReplicationSession, task: Task<Void, Never>, term: Int64)?) in
            defer { self.service = nil; self.session = nil }
            return (self.service, self.session)
        }
        session?.task.cancel()
        if let service {
            try? Kernel.sendSignal(pid: service.pid, Linux.SIGKILL)
            // A restored service is this daemon's child too (its husk was created here).
            _ = try? await Blocking.run("mitosis-cluster-reap") {
                if let started = service.started { _ = started.wait() } else { Kernel.reap(service.pid) }
            }
        }
        await session?.task.value
    }

    // MARK: Standby

    private func startStandby(term: Int64) throws {
        let arguments = ["--pdeathsig", "KILL", "--", executable, "standby", "--listen", listen, "--images", directory.path, "--term", "\(max(0, term))"]
        let process = try Self.spawner.sync {
            try ChildProcess(executable: "/usr/bin/setpriv", arguments: arguments, stdin: .null, stdout: .inherit, stderr: .inherit,
                             onlyStandardStreams: true)
        }
        lock.withLock { standby = StandbyChild(process: process, term: term, started: .now) }
        logger.info("standby started: pid \(process.pid), listening on \(listen), term \(term) or newer")
    }

    /// SIGTERM (the standby abandons the epoch in flight and releases its directory), SIGKILL
    /// after 5 s.
    private func stopStandby() async {
        guard let child = lock.withLock({ () -> StandbyChild? in defer { standby = nil }; return standby }) else { return }
        child.process.signal(Linux.SIGTERM)
        _ = try? await Blocking.run("mitosis-cluster-standby-stop") {
            for _ in 0..<500 where child.process.isRunning { Thread.sleep(forTimeInterval: 0.01) }
            if child.process.isRunning { child.process.kill() }
            return child.process.wait()
        }
    }

    /// A standby child that exited on its own (a damaged directory, a port taken) is started
    /// again, at most once a second, and the reason is logged.
    private func restartStandbyIfExited() async {
        guard let child = lock.withLock({ standby }), !child.process.isRunning, ContinuousClock.now - child.started > .seconds(1) else { return }
        let status = await (try? Blocking.run("mitosis-cluster-standby-reap") { child.process.wait() }) ?? 0
        logger.error("the standby (pid \(child.process.pid)) exited with status \(ChildProcess.exitCode(of: status)); starting it again")
        lock.withLock { if standby?.process.pid == child.process.pid { standby = nil } }
        try? startStandby(term: child.term)
    }

    // MARK: Directory

    /// The newest committed epoch by name: a committed image is renamed into place, so a
    /// numbered entry is always a committed one.
    private func newestEpoch() -> Epoch? {
        guard let names = try? Kernel.listDirectory(directory.epochsPath) else { return nil }
        return names.compactMap { name -> UInt64? in
            guard name.count == 12, name.allSatisfy(\.isASCII) else { return nil }
            return UInt64(name)
        }.max().map { Epoch($0) }
    }

    private func readiness(of newest: Epoch) async -> Readiness {
        if let cached = lock.withLock({ readiness }), cached.epoch == newest || ContinuousClock.now - cached.checked < .seconds(1) {
            return cached
        }
        let directory = self.directory
        let checked = (try? await Blocking.run("mitosis-cluster-readiness") { () -> Readiness in
            let scan = directory.scan()
            guard let found = scan.newest else {
                return Readiness(epoch: newest, ready: false, reason: scan.skipped.first ?? "no committed epoch opens", checked: .now)
            }
            let refusals = scan.tree.map { TreeRestorer.refusals(of: $0).map(\.description) }
                ?? (try? Restorer(image: found.image).refusals().map(\.description)) ?? ["the image does not open"]
            return Readiness(epoch: newest, ready: refusals.isEmpty, reason: refusals.first.map { "epoch \(found.epoch) cannot be restored here: \($0)" }, checked: .now)
        }) ?? Readiness(epoch: newest, ready: false, reason: "the readiness check failed", checked: .now)
        lock.withLock { readiness = checked }
        return checked
    }

    /// Removes every epoch and the promotion fence; `TERM` stays (the newest term seen still
    /// refuses older primaries).
    private func emptyDirectory() {
        try? FileManager.default.removeItem(atPath: directory.epochsPath)
        try? FileManager.default.removeItem(atPath: directory.fencePath)
        lock.withLock { readiness = nil }
    }
}
