import ArgumentParser
import Foundation
import Logging
import Mitosis
import MitosisReplication
import ServiceLifecycle

/// `HOST:PORT` (the last colon separates the port, so that `[::1]:7000` and `::1:7000` work).
struct Endpoint: ExpressibleByArgument {
    var host: String
    var port: Int

    init?(argument: String) {
        guard let colon = argument.lastIndex(of: ":"), let port = Int(argument[argument.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        var host = String(argument[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.host = host
        self.port = port
    }
}

/// The primary side: epochs of a running process streamed to a standby.
struct ProtectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "protect",
        abstract: "Replicate a running process to a standby: an epoch every interval, each acknowledged once durable there.",
        discussion: """
            Dirty tracking stays on; every interval the process is frozen for milliseconds, the \
            pages written since the last epoch (and its data files' changes) are sent, and the next \
            freeze waits for the standby's acknowledgement. An unreachable standby never harms the \
            process: protect retries and resynchronises. Ends when the process exits, on SIGINT or \
            SIGTERM (the process runs on untraced), or when the standby has seen a newer term. \
            See Docs/replication.md.
            """)

    @Argument(help: "The process id.") var pid: String
    @Option(help: "A standby, HOST:PORT (repeatable: every epoch goes to each standby connected).") var standby: [Endpoint]
    @Option(help: "Milliseconds between epochs.") var interval: Int = 50
    @Option(help: "This primary's term (from the failover layer); a standby that saw a newer one refuses it.") var term: UInt64 = 1
    @Option(help: "A directory whose regular files are part of every epoch (repeatable).") var data: [String] = []
    @Option(help: "Stop after this many acknowledged epochs.") var epochs: Int?
    @Option(help: "Serve Prometheus metrics (GET /metrics) on ADDR:PORT.") var metrics: Endpoint?
    @Option(help: "Dirty tracking: uffd-wp, soft-dirty or hash (default: the best this kernel has).") var tracking: String?
    @Flag(help: "Copy the process even if it asked not to be dumped.") var force = false
    @Flag(help: "Protect the process and all its descendants as one tree: every member frozen together at each epoch, committed whole, with the members' data files; promote restores the whole tree (from the warm clone when the standby keeps one).") var tree = false

    func validate() throws {
        guard interval >= 1 else { throw ValidationError("--interval must be at least 1 ms") }
        guard term >= 1 else { throw ValidationError("--term must be at least 1") }
        guard !standby.isEmpty else { throw ValidationError("give at least one --standby HOST:PORT") }
        guard standby.allSatisfy({ $0.port > 0 }) else { throw ValidationError("--standby needs a port") }
        for directory in data where !directory.hasPrefix("/") { throw ValidationError("--data \(directory): give an absolute path") }
        if let tracking, TrackingStrategy(rawValue: tracking) == nil { throw ValidationError("--tracking: uffd-wp, soft-dirty or hash") }
    }

    func run() async throws {
        let pid = targetPID(pid, forTracing: true)
        do {
            var options = ProtectOptions(standbys: standby.map { StandbyEndpoint(host: $0.host, port: $0.port) })
            options.checkpoint.copyNonDumpable = force
            options.checkpoint.strategy = tracking.flatMap(TrackingStrategy.init(rawValue:))
            options.interval = .milliseconds(interval)
            options.term = Term(term)
            options.dataDirectories = data
            options.epochLimit = epochs
            options.tree = tree
            let logger = Logger(label: "mitosis.protect")
            // Before the session: swift-metrics binds each metric to the backend of its creation.
            let endpoint = metrics.map { MetricsEndpoint.bootstrap($0, logger: logger) }
            let session = ReplicationSession(pid: pid, options: options, logger: logger)
            let clock = ContinuousClock()
            let started = clock.now
            let previous = Previous<ReplicationStatistics>()
            let status = StatusReporter(logger: logger) { [interval = options.interval] in
                let now = session.statistics
                let (before, elapsed) = previous.swap(now, clock.now)
                return StatusReporter.protectLine(now, previous: before, interval: interval, elapsed: elapsed)
            }
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
                .init(service: session, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                .init(service: status),
            ]
            if let endpoint { services.append(.init(service: endpoint, failureTerminationBehavior: .gracefullyShutdownGroup)) }
            let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
            let final = session.statistics
            let p50 = ReplicationStatistics.percentile(final.freezeMilliseconds, 50) ?? 0
            let p99 = ReplicationStatistics.percentile(final.freezeMilliseconds, 99) ?? 0
            let lag50 = ReplicationStatistics.percentile(final.lagMilliseconds, 50) ?? 0
            let lag99 = ReplicationStatistics.percentile(final.lagMilliseconds, 99) ?? 0
            let seconds = (clock.now - started).inMilliseconds / 1000
            print(String(format: "protected process %d: %d epochs acknowledged (%d full), newest %@, %.1f epochs/s; freeze p50 %.2f ms p99 %.2f ms; lag p50 %.1f ms p99 %.1f ms (%.1f epochs); %.1f MB sent, %.2f MB/s; network locked in %d",
                         pid, final.epochs, final.fullEpochs, final.acknowledged?.epoch.description ?? "none", Double(final.epochs) / max(0.001, seconds),
                         p50, p99, lag50, lag99, lag99 / Double(interval), Double(final.bytesSent) / 1e6, Double(final.bytesSent) / 1e6 / max(0.001, seconds), final.lockedEpochs))
            if !final.phases.epochs.isEmpty {
                print("epoch phases, mean/p99 ms: " + final.phases.summary(EpochPhases.primaryNames))
                // A tree's epochs have no one checkpoint's phases (its members' run side by side).
                let checkpoint = final.phases.summary(EpochPhases.checkpointNames)
                if !checkpoint.isEmpty { print("checkpoint phases, mean/p99 ms: " + checkpoint) }
                let files = final.phases.summary(EpochPhases.filesNames)
                if !files.isEmpty { print("files phases, mean/p99 ms: " + files) }
            }
        } catch {
            fail(error)
        }
    }
}

/// The standby side: epochs received, checked, committed durably, acknowledged.
struct StandbyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "standby",
        abstract: "Receive a protected process's epochs into an image directory, durably, until promoted.",
        discussion: """
            Every frame is checked (lengths, checksums, term, parent chain); an epoch is committed \
            (synced and renamed into place) before it is acknowledged; the chain is folded into a \
            new full base every --compact-every epochs. With --warm, a husk of the process is kept \
            restored up to its address space (nothing visible outside it) and every committed epoch \
            applied to it, so that promotion only finishes it. Runs until SIGINT or SIGTERM, or \
            until `mitosis promote DIR` promotes it. See Docs/replication.md.
            """)

    @Option(help: "The address to listen on, ADDR:PORT.") var listen: Endpoint
    @Option(help: "The standby directory (created, mode 0700, if missing).") var images: String
    @Option(help: "Fold the chain into a full base once it holds this many images (0: never).") var compactEvery: Int = 64
    @Flag(help: "Keep a warm clone: a frozen husk of the process, updated with every committed epoch.") var warm = false
    @Flag(help: "With --warm: prepare the husk in a new pid namespace (its pid may be taken here).") var pidns = false
    @Option(help: "Refuse primaries of terms older than this one from the start (the failover layer's leader term).") var term: UInt64 = 0
    @Option(help: "Serve Prometheus metrics (GET /metrics) on ADDR:PORT.") var metrics: Endpoint?

    func validate() throws {
        guard compactEvery >= 0 else { throw ValidationError("--compact-every must not be negative") }
        guard warm || !pidns else { throw ValidationError("--pidns goes with --warm") }
    }

    func run() async throws {
        do {
            var options = StandbyOptions(host: listen.host, port: listen.port, directory: images)
            options.compactEvery = compactEvery
            options.warm = warm ? WarmOptions(pidNamespace: pidns) : nil
            options.minimumTerm = Term(term)
            let logger = Logger(label: "mitosis.standby")
            let endpoint = metrics.map { MetricsEndpoint.bootstrap($0, logger: logger) }
            let standby = try await Standby(options: options, logger: logger)
            let clock = ContinuousClock()
            let previous = Previous<StandbyStatistics>()
            let status = StatusReporter(logger: logger) {
                let now = await standby.status()
                let (before, elapsed) = previous.swap(now.statistics, clock.now)
                return StatusReporter.standbyLine(now, previous: before, elapsed: elapsed)
            }
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
                .init(service: standby, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                .init(service: status),
            ]
            if let endpoint { services.append(.init(service: endpoint, failureTerminationBehavior: .gracefullyShutdownGroup)) }
            let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
            let final = await standby.status().statistics
            let commit99 = ReplicationStatistics.percentile(final.commitMilliseconds, 99) ?? 0
            print(String(format: "standby served %d epochs (newest %@), %.1f MB; receive+commit p99 %.1f ms", final.epochsCommitted,
                         final.committed?.epoch.description ?? "none", Double(final.bytesCommitted) / 1e6, commit99))
            if !final.phases.epochs.isEmpty { print("epoch phases, mean/p99 ms: " + final.phases.summary(EpochPhases.standbyNames)) }
        } catch {
            fail(error)
        }
    }
}

/// Brings the process to life from the standby's newest committed epoch.
struct PromoteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Bring the process to life on this standby from its newest committed epoch.",
        discussion: """
            The directory is fenced first (DIR/PROMOTED: no standby serves it again). The standby \
            serving it, reached through DIR/control, stops accepting epochs, writes the epoch's data \
            files to their paths and finishes its warm clone (or restores the epoch cold when it \
            keeps none); without a standby, the process is restored cold with its pid \
            (Docs/restore.md). Prints which epoch, how old, how long, warm or cold.
            """)

    @Argument(help: "The standby directory.") var directory: String
    @Flag(help: "Print the result as JSON.") var json = false

    func run() async throws {
        let fence = StandbyDirectory(directory)
        let fencedBefore = fence.isPromoted
        do {
            let result = try await Promotion.promote(directory: directory)
            if json {
                print(try JSONOutput.string(result))
            } else {
                print(Self.line(result))
            }
        } catch {
            // A failed promotion keeps its fence (never two primaries): say how to retry.
            let fenced = !fencedBefore && fence.isPromoted
            fail(error, hint: fenced ? "\(fence.path) stays fenced; once no process runs from it, remove \(fence.fencePath) to promote it again" : nil)
        }
    }

    /// Which epoch, how old, warm or cold, and where the time went, on one line.
    static func line(_ result: PromotionResult) -> String {
        let here = result.hostPid.map { " (pid \($0) here, in a new pid namespace)" } ?? ""
        let how = result.warm ? "from the warm clone" : "cold (\(result.coldReason ?? "no warm clone"))"
        let tree = result.members.map { " tree of \($0.count) process(es) \($0.map(String.init).joined(separator: ", ")), root" } ?? ""
        return String(format: "promoted epoch %@ (image %@, taken %@, %.0f ms before the promotion) as%@ process %d%@ %@ in %.1f ms: fence %.1f ms, standby stopped in %.1f ms, %d data file(s) in %.1f ms, %@ %.1f ms; durable %.1f ms later",
                      result.epoch.description, result.imageID, result.created, result.ageMilliseconds, tree, result.pid, here, how, result.totalMilliseconds,
                      result.steps["fence"] ?? 0, result.stopStandbyMilliseconds, result.dataFiles, result.dataFilesMilliseconds,
                      result.warm ? "finish" : "restore", result.restoreMilliseconds, result.steps["sync"] ?? 0)
    }
}

/// The previous sample of a status line, to compute rates.
final class Previous<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value?
    private var at: ContinuousClock.Instant?

    func swap(_ now: Value, _ instant: ContinuousClock.Instant) -> (Value?, Duration) {
        lock.withLock {
            defer { (value, at) = (now, instant) }
            return (value, at.map { instant - $0 } ?? .seconds(1))
        }
    }
}
