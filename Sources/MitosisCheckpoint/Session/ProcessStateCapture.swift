import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Reads the timers, signal stacks, timer slack and the like of a frozen process
/// (`RestoreRecord.ProcessState`). /proc shows the POSIX timers' settings, personality and
/// no_new_privs (scheduling is in each `ThreadState` already); the rest is known only to the process
/// (or thread) itself and is asked by injected calls (`calls`, run by `RestoreCapture` with its
/// own questions) writing into its scratch mapping: `getitimer`, `timer_gettime`,
/// `sigaltstack(NULL, &old)`, `prctl(PR_GET_PDEATHSIG, &sig)`, and `prctl` queries that answer
/// in their return value.
enum ProcessStateCapture {
    /// The answers to `calls`: their results in order, and the scratch data area as words.
    struct Answers {
        var results: [UInt64]
        var words: [UInt64]
        var itimersAt: Int, threadsAt: Int, timersAt: Int
    }

    /// The injected calls, writing at `data` plus: `itimersAt`, 3 itimervals (32 bytes each);
    /// `threadsAt`, 32 bytes per thread (stack_t and the parent-death signal); `timersAt`, one
    /// itimerspec (32 bytes) per POSIX timer.
    static func calls(main: Int32, tids: [Int32], timers: [ProcTimers.Entry], data: UInt64,
                      itimersAt: Int, threadsAt: Int, timersAt: Int) -> [(tid: Int32, call: InjectedCall)] {
        var calls: [(tid: Int32, call: InjectedCall)] = []
        for which in 0..<3 {
            calls.append((main, InjectedCall(SyscallNumber.getitimer, [UInt64(which), data + UInt64(itimersAt + which * 32)])))
        }
        for (index, entry) in timers.enumerated() {
            calls.append((main, InjectedCall(SyscallNumber.timer_gettime, [UInt64(entry.id), data + UInt64(timersAt + index * 32)])))
        }
        for option in [PrctlOption.getSecurebits, PrctlOption.getDumpable, PrctlOption.getTHPDisable] {
            calls.append((main, InjectedCall(SyscallNumber.prctl, [option, 0, 0, 0, 0])))
        }
        for (index, tid) in tids.enumerated() {
            let at = data + UInt64(threadsAt + index * 32)
            calls.append((tid, InjectedCall(SyscallNumber.sigaltstack, [0, at])))
            calls.append((tid, InjectedCall(SyscallNumber.prctl, [PrctlOption.getParentDeathSignal, at + 24, 0, 0, 0])))
            calls.append((tid, InjectedCall(SyscallNumber.prctl, [PrctlOption.getTimerSlack, 0, 0, 0, 0])))
        }
        return calls
    }

    static func capture(_ tracer: Tracer, target: TargetProcess, tids: [Int32], timers entries: [ProcTimers.Entry],
                        answers: Answers) async throws -> RestoreRecord.ProcessState {
        let personality = (try target.text("personality")).split(whereSeparator: \.isWhitespace).first.flatMap { UInt32($0, radix: 16) } ?? 0
        let noNewPrivileges = ProcStatus(parsing: try target.text("status"))["NoNewPrivs"] == "1"
        let words = answers.words, results = answers.results
        let (itimersAt, threadsAt, timersAt) = (answers.itimersAt / 8, answers.threadsAt / 8, answers.timersAt / 8)
        // struct itimerval: interval then value, each {tv_sec, tv_usec}.
        let intervalTimers = (0..<3).compactMap { which -> RestoreRecord.IntervalTimer? in
            let w = Array(words[(itimersAt + which * 4)..<(itimersAt + which * 4 + 4)])
            var value = RestoreRecord.TimerValue(intervalNanoseconds: w[0] &* 1_000_000_000 &+ w[1] &* 1000,
                                                 valueNanoseconds: w[2] &* 1_000_000_000 &+ w[3] &* 1000)
            // A periodic ITIMER_REAL that fired is re-armed only when its SIGALRM is taken: until
            // then (the signal pending in a frozen process, or blocked) getitimer reports
            // {interval, 0}, and the timer is armed all the same. It is recorded as due (1 µs,
            // as getitimer reports a timer due but not yet fired): the restored timer fires at
            // once into the SIGALRM the image queues and is re-armed when that is taken, as the
            // original would have been.
            if value.valueNanoseconds == 0 && value.intervalNanoseconds != 0 { value.valueNanoseconds = 1000 }
            return value.valueNanoseconds == 0 ? nil : RestoreRecord.IntervalTimer(which: Int32(which), value: value)
        }
        // struct itimerspec: interval then value, each {tv_sec, tv_nsec}.
        let timers = entries.enumerated().map { index, entry in
            let w = Array(words[(timersAt + index * 4)..<(timersAt + index * 4 + 4)])
            return RestoreRecord.PosixTimer(id: entry.id, clock: entry.clock, signal: entry.signal, sigevValue: entry.sigevValue,
                                            notify: entry.notify, notifyTarget: entry.notifyTarget,
                                            value: .init(intervalNanoseconds: w[0] &* 1_000_000_000 &+ w[1],
                                                         valueNanoseconds: w[2] &* 1_000_000_000 &+ w[3]))
        }
        // The results: 3 getitimer, one timer_gettime per timer, securebits, dumpable, THP
        // disable, then sigaltstack, parent-death signal and timer slack per thread.
        let prctls = 3 + entries.count
        let (securebits, dumpable, thp) = (results[prctls], results[prctls + 1], results[prctls + 2])
        var threads: [RestoreRecord.ThreadState] = []
        for (index, tid) in tids.enumerated() {
            let w = Array(words[(threadsAt + index * 4)..<(threadsAt + index * 4 + 4)])
            threads.append(RestoreRecord.ThreadState(
                tid: tid, alternateSignalStack: SignalStack(address: w[0], size: w[2], flags: Int32(truncatingIfNeeded: w[1])),
                timerSlack: results[prctls + 3 + index * 3 + 2], parentDeathSignal: Int32(truncatingIfNeeded: w[3])))
        }
        var queued: [RestoreRecord.QueuedSignal] = []
        for tid in tids {
            for info in try await tracer.queuedSignals(of: tid, shared: false) {
                queued.append(.init(tid: tid, signal: Int32(truncatingIfNeeded: info[0]), info: info))
            }
        }
        // The process's queue, asked through any live thread (the leader may have exited).
        for info in try await tracer.queuedSignals(of: tids.first ?? target.pid, shared: true) {
            queued.append(.init(tid: nil, signal: Int32(truncatingIfNeeded: info[0]), info: info))
        }
        return RestoreRecord.ProcessState(
            intervalTimers: intervalTimers, posixTimers: timers, personality: personality, securebits: UInt32(truncatingIfNeeded: securebits),
            dumpable: Int32(truncatingIfNeeded: dumpable), thpDisable: UInt32(truncatingIfNeeded: thp),
            noNewPrivileges: noNewPrivileges, threads: threads, queuedSignals: queued)
    }
}
