import CMitosis
import Glibc
import MitosisModel
import SystemPackage

/// Timers, clocks and seals on a descriptor of this process (typically a `pidfd_getfd` copy of
/// a restored process's descriptor: the same open file).
extension Kernel {
    /// The current time of clock `clock` (`CLOCK_MONOTONIC` 1…). The corresponding system call is `clock_gettime`.
    package static func clockNow(_ clock: Int32) throws(Errno) -> TimeSpec {
        var now = timespec()
        try check { clock_gettime(clockid_t(clock), &now) }
        return TimeSpec(seconds: Int64(now.tv_sec), nanoseconds: Int64(now.tv_nsec))
    }

    /// Arms (or, with a zero value, disarms) a timerfd. `flags`: `TFD_TIMER_ABSTIME` (1),
    /// `TFD_TIMER_CANCEL_ON_SET` (2). The corresponding system call is `timerfd_settime`.
    package static func setTimer(_ fd: FileDescriptor, flags: Int32, value: TimeSpec, interval: TimeSpec) throws(Errno) {
        var setting = itimerspec(it_interval: timespec(tv_sec: Int(interval.seconds), tv_nsec: Int(interval.nanoseconds)),
                                 it_value: timespec(tv_sec: Int(value.seconds), tv_nsec: Int(value.nanoseconds)))
        try check { withUnsafePointer(to: &setting) { mitosis_syscall6(SyscallNumber.timerfd_settime, Int(fd.rawValue), Int(flags), Int(bitPattern: $0), 0, 0, 0) } }
    }

    /// Sets a timerfd's count of expirations not yet read (`TFD_IOC_SET_TICKS`, a
    /// checkpoint/restore ioctl). The corresponding system call is `ioctl`.
    package static func setTimerTicks(_ fd: FileDescriptor, _ ticks: UInt64) throws(Errno) {
        var value = ticks
        try check { ioctl(fd.rawValue, 0x4008_5400 /* _IOW('T', 0, u64) */, &value) }
    }

    /// The seals of a memfd (`F_SEAL_*`). The corresponding system call is `fcntl(F_GET_SEALS)`.
    package static func seals(_ fd: FileDescriptor) throws(Errno) -> Int32 {
        try check { fcntl(fd.rawValue, 1034 /* F_GET_SEALS */) }
    }

    /// Adds seals to a memfd. The corresponding system call is `fcntl(F_ADD_SEALS)`.
    package static func addSeals(_ fd: FileDescriptor, _ seals: Int32) throws(Errno) {
        try check { fcntl(fd.rawValue, 1033 /* F_ADD_SEALS */, seals) }
    }

    /// Moves a descriptor's offset. The corresponding system call is `lseek(SEEK_SET)`.
    package static func seek(_ fd: FileDescriptor, to offset: UInt64) throws(Errno) {
        try check { lseek(fd.rawValue, off_t(offset), SEEK_SET) }
    }
}
