import Foundation
import Logging

/// The daemon's log lines on standard error, with **millisecond UTC timestamps**: a failover is
/// over in about a second, so the seconds of swift-log's `StreamLogHandler` cannot say how long
/// detection, election, the address move and the promotion took. `mitosis-bench failover` reads
/// its phases from these lines (`2026-11-30T11:10:02.670Z notice mitosis.cluster: node=a …`).
public struct ClusterLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let explicit = event.metadata { merged.merge(explicit) { $1 } }
        if let error = event.error { merged["error.message"] = "\(error)" }
        let fields = merged.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
        let line = "\(Self.timestamp(Date())) \(event.level) \(label):\(fields) \(event.message)\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// `2026-11-30T11:10:02.670Z`; `parse` reads it back.
    public static func timestamp(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    public static func parse(_ text: some StringProtocol) -> Date? {
        try? Date(String(text), strategy: .iso8601)
    }
}
