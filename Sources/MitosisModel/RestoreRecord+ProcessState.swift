extension RestoreRecord {
    /// Kernel state of the process and its threads that only the process itself can be asked
    /// for (itimers, timer values, alternate signal stacks, timer slack…) or that /proc and
    /// `sched_getattr` show: what a restore sets after memory and threads exist. Nil in images
    /// taken before it was recorded (they restore without it).
    public struct ProcessState: Codable, Sendable, Equatable {
        /// `getitimer(ITIMER_REAL/VIRTUAL/PROF)`, only the armed ones.
        public var intervalTimers: [IntervalTimer]
        /// POSIX timers (`timer_create`), ascending by id.
        public var posixTimers: [PosixTimer]
        /// `/proc/PID/personality`.
        public var personality: UInt32
        /// `prctl(PR_GET_SECUREBITS)`.
        public var securebits: UInt32
        /// `prctl(PR_GET_DUMPABLE)`: 0, 1 (or 2, suid_dumpable, which cannot be set back).
        public var dumpable: Int32
        /// `prctl(PR_GET_THP_DISABLE)`: 0, 1, or 1 with `PR_THP_DISABLE_EXCEPT_ADVISED` (2).
        public var thpDisable: UInt32
        /// `NoNewPrivs:` of `/proc/PID/status`.
        public var noNewPrivileges: Bool
        public var threads: [ThreadState]
        /// Every signal queued at the freeze, with its siginfo, oldest first: those the kernel
        /// held (`PTRACE_PEEKSIGINFO`) and those the freeze itself caught on their way to a
        /// handler. Queued again as they were, so a timer's signal still says `SI_TIMER`.
        public var queuedSignals: [QueuedSignal]

        public init(intervalTimers: [IntervalTimer], posixTimers: [PosixTimer], personality: UInt32, securebits: UInt32,
                    dumpable: Int32, thpDisable: UInt32, noNewPrivileges: Bool, threads: [ThreadState], queuedSignals: [QueuedSignal]) {
            self.queuedSignals = queuedSignals
            self.intervalTimers = intervalTimers
            self.posixTimers = posixTimers
            self.personality = personality
            self.securebits = securebits
            self.dumpable = dumpable
            self.thpDisable = thpDisable
            self.noNewPrivileges = noNewPrivileges
            self.threads = threads
        }
    }

    public struct QueuedSignal: Codable, Sendable, Equatable {
        /// The thread it was queued for; nil when queued for the process.
        public var tid: Int32?
        public var signal: Int32
        /// The 128-byte `siginfo_t`, as 16 words.
        public var info: [UInt64]

        public init(tid: Int32?, signal: Int32, info: [UInt64]) {
            self.tid = tid
            self.signal = signal
            self.info = info
        }
    }

    /// A timer's period and the time left until it next fires, in nanoseconds (0: disarmed).
    public struct TimerValue: Codable, Sendable, Equatable {
        public var intervalNanoseconds: UInt64
        public var valueNanoseconds: UInt64

        public init(intervalNanoseconds: UInt64, valueNanoseconds: UInt64) {
            self.intervalNanoseconds = intervalNanoseconds
            self.valueNanoseconds = valueNanoseconds
        }
    }

    public struct IntervalTimer: Codable, Sendable, Equatable {
        /// `ITIMER_REAL` (0), `ITIMER_VIRTUAL` (1) or `ITIMER_PROF` (2).
        public var which: Int32
        public var value: TimerValue

        public init(which: Int32, value: TimerValue) {
            self.which = which
            self.value = value
        }
    }

    /// One POSIX timer: what `/proc/PID/timers` shows, and its value (`timer_gettime`).
    public struct PosixTimer: Codable, Sendable, Equatable {
        /// The id `timer_create` gave; a restore asks for the same one.
        public var id: Int32
        public var clock: Int32
        public var signal: Int32
        /// `sigev_value`, passed back to the handler in `si_value`.
        public var sigevValue: UInt64
        /// `sigev_notify`: `SIGEV_SIGNAL` (0), `SIGEV_NONE` (1), `SIGEV_THREAD` (2), with
        /// `SIGEV_THREAD_ID` (4) when one thread receives the signal.
        public var notify: Int32
        /// The thread notified (with `SIGEV_THREAD_ID`), else the process.
        public var notifyTarget: Int32
        public var value: TimerValue

        public init(id: Int32, clock: Int32, signal: Int32, sigevValue: UInt64, notify: Int32, notifyTarget: Int32, value: TimerValue) {
            self.id = id
            self.clock = clock
            self.signal = signal
            self.sigevValue = sigevValue
            self.notify = notify
            self.notifyTarget = notifyTarget
            self.value = value
        }
    }

    /// Per-thread state beside registers, masks, scheduling and kernel pointers.
    public struct ThreadState: Codable, Sendable, Equatable {
        public var tid: Int32
        /// `sigaltstack(NULL, &old)` (flags `SS_DISABLE` when the thread has none).
        public var alternateSignalStack: SignalStack
        /// `prctl(PR_GET_TIMERSLACK)`, nanoseconds.
        public var timerSlack: UInt64
        /// `prctl(PR_GET_PDEATHSIG)`: recorded, not armed again (see Docs/restore.md).
        public var parentDeathSignal: Int32

        public init(tid: Int32, alternateSignalStack: SignalStack, timerSlack: UInt64, parentDeathSignal: Int32) {
            self.tid = tid
            self.alternateSignalStack = alternateSignalStack
            self.timerSlack = timerSlack
            self.parentDeathSignal = parentDeathSignal
        }
    }
}

/// The entries of `/proc/PID/timers` (one block of four lines per POSIX timer):
/// ```
/// ID: 5
/// signal: 14/0000000000001234
/// notify: signal/tid.26814
/// ClockID: 1
/// ```
public enum ProcTimers {
    public struct Entry: Equatable, Sendable {
        public var id: Int32
        public var signal: Int32
        public var sigevValue: UInt64
        public var notify: Int32
        public var notifyTarget: Int32
        public var clock: Int32
    }

    /// Nil when an entry is incomplete or malformed: a restore must not guess a timer.
    public static func parse(_ text: String) -> [Entry]? {
        var entries: [Entry] = []
        var current: [String: Substring] = [:]
        func finish() -> Bool {
            guard !current.isEmpty else { return true }
            defer { current = [:] }
            guard let id = current["ID"].flatMap({ Int32($0) }), let clock = current["ClockID"].flatMap({ Int32($0) }),
                  let signalPart = current["signal"]?.split(separator: "/", maxSplits: 1), signalPart.count == 2,
                  let signal = Int32(signalPart[0]), let value = UInt64(signalPart[1], radix: 16),
                  let notifyPart = current["notify"]?.split(separator: "/", maxSplits: 1), notifyPart.count == 2
            else { return false }
            let how: Int32
            switch notifyPart[0] {
            case "signal": how = 0
            case "none": how = 1
            case "thread": how = 2
            default: return false
            }
            let target = notifyPart[1].split(separator: ".", maxSplits: 1)
            guard target.count == 2, target[0] == "tid" || target[0] == "pid", let pid = Int32(target[1]) else { return false }
            entries.append(Entry(id: id, signal: signal, sigevValue: value, notify: how | (target[0] == "tid" ? 4 : 0),
                                 notifyTarget: pid, clock: clock))
            return true
        }
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let key = String(line[..<colon])
            let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
            if key == "ID" && !finish() { return nil }
            guard current[key] == nil else { return nil }
            current[key] = value
        }
        return finish() ? entries.sorted { $0.id < $1.id } : nil
    }
}
