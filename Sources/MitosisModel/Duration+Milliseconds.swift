extension Duration {
    /// The duration in fractional milliseconds: the unit of every phase, status line and benchmark
    /// figure Mitosis prints.
    public var inMilliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}
