/// The process's clocks at the freeze, for a restore on a host whose clocks differ
/// (Docs/restore.md, *Time namespace*).
extension RestoreRecord {
    /// `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` as the process read them (asked by injected
    /// `clock_gettime`, so inside its own time namespace), and `CLOCK_REALTIME` beside them.
    /// A restore compares them with its host's: where the process's monotonic clock would jump by
    /// more than the real time that passed, it is restored in a time namespace whose offsets make
    /// both clocks continue from these values.
    public struct Clocks: Codable, Sendable, Equatable {
        public var monotonic: TimeSpec
        public var boottime: TimeSpec
        public var realtime: TimeSpec

        public init(monotonic: TimeSpec, boottime: TimeSpec, realtime: TimeSpec) {
            self.monotonic = monotonic
            self.boottime = boottime
            self.realtime = realtime
        }

        /// What is wrong with the recorded values (an image is hostile input), or nil: each
        /// must be a time the kernel can show (`0 ≤ seconds < 2^32`, below its limit of about 4.6e9 s for a time namespace, and nanoseconds below a second).
        public var problem: String? {
            for (name, value) in [("monotonic", monotonic), ("boottime", boottime), ("realtime", realtime)] {
                if !(0..<(1 << 32)).contains(value.seconds) || !(0..<1_000_000_000).contains(value.nanoseconds) {
                    return "its \(name) clock \(value.seconds) s \(value.nanoseconds) ns is not a time the kernel can show"
                }
            }
            return nil
        }
    }
}

extension TimeSpec {
    /// The value in nanoseconds (clocks recorded here stay below 2^32 s: no overflow).
    public var totalNanoseconds: Int64 { seconds * 1_000_000_000 + nanoseconds }

    /// A value from nanoseconds, which may be negative (an offset).
    public init(totalNanoseconds: Int64) {
        var seconds = totalNanoseconds / 1_000_000_000, nanoseconds = totalNanoseconds % 1_000_000_000
        if nanoseconds < 0 { seconds -= 1; nanoseconds += 1_000_000_000 }
        self.init(seconds: seconds, nanoseconds: nanoseconds)
    }
}
