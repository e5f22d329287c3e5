/// The dirty-page tracking `mitosis check` reports: the strategy a `CheckpointSession` without one
/// picks (`TrackingStrategy.automatic`), and every strategy this kernel offers.
extension KernelProbe {
    public static let dirtyTracking = KernelProbe("dirty-tracking") { _ in
        let offered = TrackingStrategy.allCases.filter(\.isSupported).map(\.rawValue)
        return "\(TrackingStrategy.automatic.rawValue) (auto picks it; this kernel offers \(offered.joined(separator: ", ")))"
    }
}
