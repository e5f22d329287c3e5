import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Reads the timers, signal stacks, timer slack and the like of a frozen process
/// (`RestoreRecord.ProcessState`). /proc shows the POSIX timers' settings, personality and
/// no_new_privs (scheduling is in each `ThreadState` already); the rest is known only to the process
/// (or thread) itself and is asked by injected calls writing into a scratch mapping:
/// `getitimer`, `timer_gettime`, `sigaltstack(NULL, &old)`, `prctl(PR_GET_PDEATHSIG, &sig)`,
/// and `prctl` queries that answer in their return value.
enum ProcessStateCapture {
    static func capture(_ tracer: Tracer, target: TargetProcess, tids: [Int32]) async throws -> RestoreRecord.ProcessState {
        let pid = target.pid
        guard let entries = ProcTimers.parse((try? target.text("timers")) ?? "") else {
            throw MitosisError.unsupported(feature: "restore", detail: "/proc/\(pid)/timers could not be parsed")
        }
        let personality = (try target.text("personality")).split(whereSeparator: \.isWhitespace).first.flatMap { UInt32($0, radix: 16) } ?? 0
        let noNewPrivileges = ProcStatus(parsing: try target.text("status"))["NoNewPrivs"] == "1"

        // Scratch layout: 3 itimervals (32 bytes each), then 32 bytes per thread (stack_t and
        // the parent-death signal), then one itimerspec (32 bytes) per POSIX timer.
        let page = Int(PagemapFile.pageSize)
        let threadsAt = 128, timersAt = 128 + 32 * tids.count
        let length = (timersAt + 32 * entries.count + page - 1) / page * page
        let scratch = try await tracer.injectMmap(length: length)
        let asked: Result<RestoreRecord.ProcessState, any Error>
        do {
            for which in 0..<3 {
                _ = try await tracer.performSyscall(SyscallNumber.getitimer, [UInt64(which), scratch + UInt64(which * 32)])
            }
            for (index, entry) in entries.enumerated() {
                _ = try await tracer.performSyscall(SyscallNumber.timer_gettime, [UInt64(entry.id), scratch + UInt64(timersAt + index * 32)])
            }
            let securebits = try await tracer.performSyscall(SyscallNumber.prctl, [PrctlOption.getSecurebits, 0, 0, 0, 0])
            let dumpable = try await tracer.performSyscall(SyscallNumber.prctl, [PrctlOption.getDumpable, 0, 0, 0, 0])
            let thp = try await tracer.performSyscall(SyscallNumber.prctl, [PrctlOption.getTHPDisable, 0, 0, 0, 0])
            var slacks: [UInt64] = []
            for (index, tid) in tids.enumerated() {
                let at = scratch + UInt64(threadsAt + index * 32)
                _ = try await tracer.performSyscall(SyscallNumber.sigaltstack, [0, at], in: tid)
                _ = try await tracer.performSyscall(SyscallNumber.prctl, [PrctlOption.getParentDeathSignal, at + 24, 0, 0, 0], in: tid)
                slacks.append(try await tracer.performSyscall(SyscallNumber.prctl, [PrctlOption.getTimerSlack, 0, 0, 0, 0], in: tid))
            }
            var words = [UInt64](repeating: 0, count: length / 8)
            let count = try words.withUnsafeMutableBytes { buffer throws(Errno) in try Kernel.readMemory(pid: pid, address: scratch, into: buffer) }
            guard count == length else { throw MitosisError.system(operation: "reading the scratch mapping of \(pid)", errno: .ioError) }
            // struct itimerval: interval then value, each {tv_sec, tv_usec}.
            let intervalTimers = (0..<3).compactMap { which -> RestoreRecord.IntervalTimer? in
                let w = Array(words[(which * 4)..<(which * 4 + 4)])
                var value = RestoreRecord.TimerValue(intervalNanoseconds: w[0] &* 1_000_000_000 &+ w[1] &* 1000,
                                                     valueNanoseconds: w[2] &* 1_000_000_000 &+ w[3] &* 1000)
                // A periodic ITIMER_REAL that fired is re-armed only when its SIGALRM is taken:
                // until then (the signal pending in a frozen process, or blocked) getitimer
                // reports {interval, 0}, and the timer is armed all the same. It is recorded as
                // due (1 µs, as getitimer reports a timer due but not yet fired): the restored
                // timer fires at once into the SIGALRM the image queues and is re-armed when that
                // is taken, as the original would have been.
                if value.valueNanoseconds == 0 && value.intervalNanoseconds != 0 { value.valueNanoseconds = 1000 }
                return value.valueNanoseconds == 0 ? nil : RestoreRecord.IntervalTimer(which: Int32(which), value: value)
            }
            // struct itimerspec: interval then value, each {tv_sec, tv_nsec}.
            let timers = entries.enumerated().map { index, entry in
                let w = Array(words[(timersAt / 8 + index * 4)..<(timersAt / 8 + index * 4 + 4)])
                return RestoreRecord.PosixTimer(id: entry.id, clock: entry.clock, signal: entry.signal, sigevValue: entry.sigevValue,
                                                notify: entry.notify, notifyTarget: entry.notifyTarget,
                                                value: .init(intervalNanoseconds: w[0] &* 1_000_000_000 &+ w[1],
                                                             valueNanoseconds: w[2] &* 1_000_000_000 &+ w[3]))
            }
            var threads: [RestoreRecord.ThreadState] = []
            for (index, tid) in tids.enumerated() {
                let w = Array(words[(threadsAt / 8 + index * 4)..<(threadsAt / 8 + index * 4 + 4)])
                threads.append(RestoreRecord.ThreadState(
                    tid: tid, alternateSignalStack: SignalStack(address: w[0], size: w[2], flags: Int32(truncatingIfNeeded: w[1])),
                    timerSlack: slacks[index], parentDeathSignal: Int32(truncatingIfNeeded: w[3])))
            }
            var queued: [RestoreRecord.QueuedSignal] = []
            for tid in tids {
                for info in try await tracer.queuedSignals(of: tid, shared: false) {
                    queued.append(.init(tid: tid, signal: Int32(truncatingIfNeeded: info[0]), info: info))
                }
            }
            // The process's queue, asked through any live thread (the leader may have exited).
            for info in try await tracer.queuedSignals(of: tids.first ?? pid, shared: true) {
                queued.append(.init(tid: nil, signal: Int32(truncatingIfNeeded: info[0]), info: info))
            }
            asked = .success(RestoreRecord.ProcessState(
                intervalTimers: intervalTimers, posixTimers: timers, personality: personality, securebits: UInt32(truncatingIfNeeded: securebits),
                dumpable: Int32(truncatingIfNeeded: dumpable), thpDisable: UInt32(truncatingIfNeeded: thp),
                noNewPrivileges: noNewPrivileges, threads: threads, queuedSignals: queued))
        } catch {
            asked = .failure(error)
        }
        try await tracer.injectMunmap(address: scratch, length: length)
        return try asked.get()
    }
}
