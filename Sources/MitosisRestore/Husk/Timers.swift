import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 5, continued: interval timers and POSIX timers, armed with the time each had left at
/// the freeze (so a timer fires that much after the restore, as CRIU does; its overrun count
/// is not kept).
extension Tracer {
    /// POSIX timers are created with their ids (`PR_TIMER_CREATE_RESTORE_IDS`: `timer_create`
    /// takes the id it is given, Linux 6.13+; `RestorePlan` refuses images with timers on older
    /// kernels), then every timer is armed. Created after the threads, which a timer may notify.
    func restoreTimers(_ plan: RestorePlan, area: WorkArea) throws {
        guard let state = plan.record.processState else { return }
        let sigevent = area.scratch + WorkArea.timerArgs, spec = sigevent + 64, id = spec + 32
        if !state.posixTimers.isEmpty {
            try huskCall("letting timer_create take chosen ids (PR_TIMER_CREATE_RESTORE_IDS)", SyscallNumber.prctl,
                         [PrctlOption.timerCreateRestoreIDs, 1, 0, 0, 0])
            for timer in state.posixTimers {
                // struct sigevent: sigev_value, sigev_signo, sigev_notify, then the thread id.
                let event: [UInt64] = [timer.sigevValue, UInt64(UInt32(bitPattern: timer.signal)) | UInt64(UInt32(bitPattern: timer.notify)) << 32,
                                       timer.notify & sigevThreadID != 0 ? UInt64(UInt32(bitPattern: timer.notifyTarget)) : 0, 0, 0, 0, 0, 0]
                try event.withUnsafeBytes { try huskWrite("passing the sigevent of timer \(timer.id)", sigevent, $0) }
                try huskWrite("passing the id of timer \(timer.id)", id, value: timer.id)
                try huskCall("creating POSIX timer \(timer.id) (clock \(timer.clock))", SyscallNumber.timer_create,
                             [UInt64(UInt32(bitPattern: timer.clock)), sigevent, id])
                var created: Int32 = -1
                _ = try? withUnsafeMutableBytes(of: &created) { buffer throws(Errno) in try Kernel.readMemory(pid: pid, address: id, into: buffer) }
                guard created == timer.id else {
                    throw StepFailure(step: "creating POSIX timer \(timer.id)", detail: "the kernel gave id \(created)")
                }
            }
            try huskCall("letting timer_create choose ids again", SyscallNumber.prctl, [PrctlOption.timerCreateRestoreIDs, 0, 0, 0, 0])
        }
        for timer in state.posixTimers where timer.value.valueNanoseconds != 0 {
            let words = Self.timespecs(timer.value)
            try words.withUnsafeBytes { try huskWrite("passing the value of timer \(timer.id)", spec, $0) }
            try huskCall("arming POSIX timer \(timer.id)", SyscallNumber.timer_settime, [UInt64(UInt32(bitPattern: timer.id)), 0, spec, 0])
        }
        for timer in state.intervalTimers {
            // struct itimerval counts microseconds: a value below one would disarm the timer.
            let words = Self.timespecs(timer.value).enumerated().map { $0.offset % 2 == 1 ? $0.element / 1000 : $0.element }
            var value = words
            if value[2] == 0 && value[3] == 0 { value[3] = 1 }
            try value.withUnsafeBytes { try huskWrite("passing interval timer \(timer.which)", spec, $0) }
            try huskCall("arming interval timer \(["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"][Int(timer.which) % 3])",
                         SyscallNumber.setitimer, [UInt64(timer.which), spec, 0])
        }
    }

    /// `{interval s, ns, value s, ns}`, the layout of `struct itimerspec`.
    static func timespecs(_ value: RestoreRecord.TimerValue) -> [UInt64] {
        [value.intervalNanoseconds / 1_000_000_000, value.intervalNanoseconds % 1_000_000_000,
         value.valueNanoseconds / 1_000_000_000, value.valueNanoseconds % 1_000_000_000]
    }
}
