/// The signals a signalfd accepts.
public struct SignalfdState: Equatable, Hashable, Sendable, Codable {
    /// `sigmask:` as the kernel prints it: bit `n - 1` stands for signal `n`.
    public var mask: UInt64
    /// The signal numbers in `mask`, ascending.
    public var signals: [Int32]

    public init(mask: UInt64) {
        self.mask = mask
        signals = (1...64).filter { mask & (1 << UInt64($0 - 1)) != 0 }.map { Int32($0) }
    }
}
