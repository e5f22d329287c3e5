import Foundation
import Logging
import MitosisKernel
import ServiceLifecycle

/// One status line per second: printed on a terminal, logged (swift-log, info) otherwise.
public struct StatusReporter: Service {
    private let line: @Sendable () async -> String
    private let logger: Logger
    private let interval: Duration

    public init(interval: Duration = .seconds(1), logger: Logger, line: @escaping @Sendable () async -> String) {
        self.interval = interval
        self.logger = logger
        self.line = line
    }

    public static var standardOutputIsTerminal: Bool { Kernel.isTerminal(1) }

    public func run() async throws {
        let terminal = Self.standardOutputIsTerminal
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: interval)
                let text = await line()
                if terminal {
                    FileHandle.standardOutput.write(Data((text + "\n").utf8))
                } else {
                    logger.info("\(text)")
                }
            }
        }
    }

    /// `epoch 42  freeze p50 3.1 ms p99 7.2 ms  lag 12 ms (0 epochs)  1.3 MB/s`
    public static func protectLine(_ now: ReplicationStatistics, previous: ReplicationStatistics?, interval: Duration, elapsed: Duration) -> String {
        let p50 = ReplicationStatistics.percentile(now.freezeMilliseconds, 50).map { String(format: "%.1f", $0) } ?? "-"
        let p99 = ReplicationStatistics.percentile(now.freezeMilliseconds, 99).map { String(format: "%.1f", $0) } ?? "-"
        let lag = now.lagMilliseconds.last ?? 0
        let intervalMs = max(1, interval.inMilliseconds)
        let bytes = now.bytesSent - (previous?.bytesSent ?? 0)
        let rate = Double(bytes) / max(0.001, elapsed.inMilliseconds / 1000) / 1e6
        let epoch: String = now.acknowledged?.epoch.description ?? "-"
        let lagText = String(format: "%.0f", lag)
        let lagEpochs = Int(lag / intervalMs)
        let rateText = String(format: "%.1f", rate)
        var line = "epoch \(epoch)  freeze p50 \(p50) ms p99 \(p99) ms  lag \(lagText) ms (\(lagEpochs) epochs)  \(rateText) MB/s"
        if !now.connected { line += "  standby unreachable: " + (now.lastError ?? "connecting") }
        return line
    }

    /// `epoch 42 committed  ready  1.3 MB/s  commits 40/s`
    public static func standbyLine(_ now: StandbyStatus, previous: StandbyStatistics?, elapsed: Duration) -> String {
        let seconds = max(0.001, elapsed.inMilliseconds / 1000)
        let rate = Double(now.statistics.bytesCommitted - (previous?.bytesCommitted ?? 0)) / seconds / 1e6
        let commits = Double(now.statistics.epochsCommitted - (previous?.epochsCommitted ?? 0)) / seconds
        let readiness: String = now.ready ? "ready" : "not ready: " + (now.reasons.first ?? "")
        let epoch: String = now.statistics.committed?.epoch.description ?? "-"
        let rateText = String(format: "%.1f", rate)
        let commitsText = String(format: "%.0f", commits)
        let commit = ReplicationStatistics.percentile(Array(now.statistics.commitMilliseconds.suffix(1000)), 50).map { String(format: "%.1f", $0) } ?? "-"
        return "epoch \(epoch) committed (term \(now.term))  \(readiness)  \(rateText) MB/s  \(commitsText) epochs/s  receive+commit p50 \(commit) ms"
    }
}
