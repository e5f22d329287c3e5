import Foundation
import MitosisImage

/// One checkpoint in a few numbers, for people and for `--json`.
public struct CheckpointSummary: Codable, Sendable, Equatable {
    /// Where the image was written, when it went to a directory.
    public var path: String?
    public var id: String
    public var pid: Int32
    public var kind: CheckpointKind
    public var sequence: Int
    /// The parent image, relative to this one.
    public var parent: String?
    public var tracking: String
    public var stats: CheckpointStats
    public var precopyRounds: Int
    public var pagesCopied: Int
    public var pagesCopiedFrozen: Int
    public var threads: Int
    public var descriptors: Int

    public init(_ result: CheckpointResult, path: String? = nil) {
        let manifest = result.manifest
        self.path = path
        id = manifest.id
        pid = manifest.pid
        kind = manifest.kind
        sequence = manifest.sequence
        parent = manifest.parent?.path
        tracking = manifest.tracking
        stats = manifest.stats
        precopyRounds = result.precopyRounds
        pagesCopied = result.pagesCopied
        pagesCopiedFrozen = result.pagesCopiedFrozen
        threads = manifest.threads.count
        descriptors = manifest.descriptors?.count ?? 0
    }

    /// Two lines: what was written where, then what it cost.
    public var text: String {
        let stored = Self.bytes(stats.bytesWritten)
        let over = parent.map { " over \($0)" } ?? ""
        return """
            \(kind.rawValue) checkpoint \(sequence) of process \(pid) (\(tracking))\(over)\(path.map { " in \($0)" } ?? "")
              frozen \(Self.milliseconds(stats.frozenNanoseconds)) of \(Self.milliseconds(stats.durationNanoseconds)); \
            \(stats.pagesWritten) pages stored (\(stored)), \(stats.pagesScanned) scanned, \
            \(pagesCopied) copied in \(precopyRounds) rounds + \(pagesCopiedFrozen) frozen; \(threads) threads, \(descriptors) fds
            """
    }

    package static func milliseconds(_ nanoseconds: UInt64) -> String {
        let value = Double(nanoseconds) / 1e6
        return value < 10 ? String(format: "%.2f ms", value) : String(format: "%.0f ms", value)
    }

    package static func bytes(_ count: UInt64) -> String {
        if count >= 1 << 30 { return String(format: "%.2f GiB", Double(count) / Double(1 << 30)) }
        if count >= 1 << 20 { return String(format: "%.1f MiB", Double(count) / Double(1 << 20)) }
        return "\(count / 1024) KiB"
    }
}
