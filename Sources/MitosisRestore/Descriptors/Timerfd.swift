import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Timerfds: created on their clock, armed again through a copy of the new descriptor, with
/// their unread expiration count.
extension Tracer {
    /// A relative timer fires its remaining time after the restore (time stood still while the
    /// process was down, as CRIU does). An absolute one (`TFD_TIMER_ABSTIME`) keeps its deadline:
    /// the clock at the freeze plus the time that remained, so it fires at once if the deadline
    /// passed meanwhile. The count of expirations not yet read is set with `TFD_IOC_SET_TICKS`.
    ///
    /// In a time namespace of its own, the process's monotonic and boot clocks stand where they
    /// were at the freeze, so such a deadline is as far off as at the freeze: it is armed that
    /// far from Mitosis's clock now (the copy is armed from Mitosis, which reads its own clocks).
    func createTimerfd(_ descriptor: OpenDescriptor, _ timer: TimerfdRestoreState, inTimeNamespace: Bool) throws -> UInt64 {
        let state = timer.state
        let flags = descriptor.flags & UInt32(Linux.O_NONBLOCK | Linux.O_CLOEXEC)  // TFD_NONBLOCK, TFD_CLOEXEC
        let fd = try huskCall("creating the timerfd of fd \(descriptor.fd) (clock \(state.clockId))", SyscallNumber.timerfd_create,
                              [UInt64(state.clockId), UInt64(flags)])
        try withCopy(of: fd, step: "arming the timerfd of fd \(descriptor.fd)") { copy throws(Errno) in
            let zero = TimeSpec(seconds: 0, nanoseconds: 0)
            if state.value != zero {
                var value = state.value
                if state.settimeFlags & 1 != 0 {  // TFD_TIMER_ABSTIME
                    let namespaced = inTimeNamespace && [ClockID.monotonic, ClockID.boottime, 9 /* BOOTTIME_ALARM */].contains(state.clockId)
                    let base = namespaced ? try Kernel.clockNow(state.clockId) : timer.clockNow
                    let nanoseconds = base.nanoseconds + state.value.nanoseconds
                    value = TimeSpec(seconds: base.seconds + state.value.seconds + nanoseconds / 1_000_000_000,
                                     nanoseconds: nanoseconds % 1_000_000_000)
                }
                try Kernel.setTimer(copy, flags: Int32(state.settimeFlags & 3), value: value, interval: state.interval)
            }
            if state.ticks > 0 { try Kernel.setTimerTicks(copy, state.ticks) }
        }
        return fd
    }
}
