/// Where one epoch's time went, in milliseconds: what `mitosis-bench replicate` and the
/// debug log report, so that the cost of an epoch is measured rather than guessed.
///
/// On the primary, from the start of the epoch's checkpoint: `capture` (pre-copy rounds, the
/// freeze, the thaw and what is read after it), of which `freeze` is the frozen part; `send`
/// (the pages handed to TCP); `files` (data-file changes read and sent, the page index built);
/// `acknowledgement` (from the `imageFinish` frame to the standby's `ack` read: its commit plus
/// a round trip, and, as the ack is read right before the next epoch's freeze, that epoch's
/// first pre-copy); `total` (checkpoint start to acknowledgement: the lag plus what came before
/// the freeze). The next epoch's `before freeze` is the part of that wait its pre-copy did not
/// cover.
///
/// On the standby: `receive` (first frame to `imageFinish`), `commit` (files synced, directory
/// renamed into place), `verify` (the committed image read back and checked), `readiness` (the
/// restore compatibility check, once a second at most), `total` (first frame to acknowledgement).
public struct EpochPhases: Sendable, Equatable {
    public var values: [String: Double]

    public init(_ values: [String: Double] = [:]) { self.values = values }

    public subscript(_ name: String) -> Double {
        get { values[name] ?? 0 }
        set { values[name] = newValue }
    }

    public static let primaryNames = ["capture", "freeze", "send", "files", "acknowledgement", "total"]
    /// The checkpoint's own phases within `capture` and `send` (`CheckpointResult.phases`).
    public static let checkpointNames = ["precopy", "before freeze", "lock", "seize", "frozen map", "frozen copy", "frozen threads+fds",
                                         "frozen restore state", "frozen injected calls", "frozen connections", "thaw", "unlock", "inspect", "write"]
    /// The parts of `files` (the sink's finish): the page index, the data files' deltas read,
    /// the manifest encoded, the frames handed to the network.
    public static let filesNames = ["index", "data files", "manifest", "flush"]
    public static let standbyNames = ["receive", "commit", "verify", "readiness", "total"]
}

/// The phases of the most recent epochs (bounded), with their percentiles.
public struct PhaseHistory: Sendable, Equatable {
    public private(set) var epochs: [EpochPhases] = []
    /// How many epochs are kept.
    public static let capacity = 4096

    public init() {}

    mutating func append(_ phases: EpochPhases) {
        epochs.append(phases)
        if epochs.count > Self.capacity { epochs.removeFirst(epochs.count - Self.capacity * 3 / 4) }
    }

    /// The `p`-th percentile (nearest rank) of phase `name` over the epochs kept.
    public func percentile(_ name: String, _ p: Double) -> Double? {
        ReplicationStatistics.percentile(epochs.compactMap { $0.values[name] }, p)
    }

    /// The mean of phase `name` over the epochs kept.
    public func mean(_ name: String) -> Double? {
        let values = epochs.compactMap { $0.values[name] }
        return values.isEmpty ? nil : values.reduce(0, +) / Double(values.count)
    }

    /// `capture 12.1/30.2  freeze 4.0/9.1 …`: mean and p99 of each phase, in ms.
    public func summary(_ names: [String]) -> String {
        names.compactMap { name in
            guard let mean = mean(name), let p99 = percentile(name, 99) else { return nil }
            return "\(name) " + String(format: "%.1f/%.1f", mean, p99)
        }.joined(separator: "  ")
    }
}
