/// A `struct timespec`.
public struct TimeSpec: Equatable, Hashable, Sendable, Codable {
    public var seconds: Int64
    public var nanoseconds: Int64

    package init(seconds: Int64, nanoseconds: Int64) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

/// A timerfd's clock and its armed value.
public struct TimerfdState: Equatable, Hashable, Sendable, Codable {
    /// `CLOCK_REALTIME` 0, `CLOCK_MONOTONIC` 1, `CLOCK_BOOTTIME` 7, `CLOCK_REALTIME_ALARM` 8, `CLOCK_BOOTTIME_ALARM` 9.
    public var clockId: Int32
    /// Expirations not yet read.
    public var ticks: UInt64
    /// `TFD_TIMER_ABSTIME` 1, `TFD_TIMER_CANCEL_ON_SET` 2 (octal in fdinfo).
    public var settimeFlags: UInt32
    /// Time left until the next expiration (0, 0 when disarmed).
    public var value: TimeSpec
    public var interval: TimeSpec

    package init(clockId: Int32, ticks: UInt64, settimeFlags: UInt32, value: TimeSpec, interval: TimeSpec) {
        self.clockId = clockId
        self.ticks = ticks
        self.settimeFlags = settimeFlags
        self.value = value
        self.interval = interval
    }
}

/// A timerfd as restore needs it: its fdinfo read again at the freeze together with its clock,
/// so that an absolute (`TFD_TIMER_ABSTIME`) timer keeps its deadline: fdinfo shows only the
/// time remaining.
public struct TimerfdRestoreState: Codable, Sendable, Equatable {
    public var fd: Int32
    public var state: TimerfdState
    /// The timer's clock when its remaining time was read.
    public var clockNow: TimeSpec

    public init(fd: Int32, state: TimerfdState, clockNow: TimeSpec) {
        self.fd = fd
        self.state = state
        self.clockNow = clockNow
    }
}
