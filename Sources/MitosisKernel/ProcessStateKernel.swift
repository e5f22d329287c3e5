import CMitosis
import Glibc
import MitosisModel
import SystemPackage

/// Numbers of the system calls that capture and restore of process state inject.
extension SyscallNumber {
    package static let getitimer = Int(SYS_getitimer)
    package static let setitimer = Int(SYS_setitimer)
    package static let setpgid = Int(SYS_setpgid)
    package static let setsid = Int(SYS_setsid)
    package static let getpgid = Int(SYS_getpgid)
    package static let getsid = Int(SYS_getsid)
    /// Process trees: a restored parent reaps a child husk that failed; a child takes an open
    /// file description another process holds.
    package static let wait4 = Int(SYS_wait4)
    package static let pidfd_open = 434
    package static let pidfd_getfd = 438
    package static let setgroups = Int(SYS_setgroups)
    package static let setresuid = Int(SYS_setresuid)
    package static let setresgid = Int(SYS_setresgid)
    package static let setfsuid = Int(SYS_setfsuid)
    package static let setfsgid = Int(SYS_setfsgid)
    package static let capset = Int(SYS_capset)
    package static let personality = Int(SYS_personality)
    package static let timer_create = Int(SYS_timer_create)
    package static let timer_settime = Int(SYS_timer_settime)
    package static let timer_gettime = Int(SYS_timer_gettime)
    package static let rt_sigqueueinfo = Int(SYS_rt_sigqueueinfo)
    package static let rt_tgsigqueueinfo = Int(SYS_rt_tgsigqueueinfo)
}

/// `prctl(2)` options (linux/prctl.h; some newer than Debian 12's headers).
package enum PrctlOption {
    package static let setParentDeathSignal: UInt64 = 1
    package static let getParentDeathSignal: UInt64 = 2
    package static let getDumpable: UInt64 = 3
    package static let setDumpable: UInt64 = 4
    package static let capabilityBoundingSetDrop: UInt64 = 24
    package static let getSecurebits: UInt64 = 27
    package static let setSecurebits: UInt64 = 28
    package static let setTimerSlack: UInt64 = 29
    package static let getTimerSlack: UInt64 = 30
    package static let setNoNewPrivileges: UInt64 = 38
    package static let setTHPDisable: UInt64 = 41
    package static let getTHPDisable: UInt64 = 42
    package static let ambientCapability: UInt64 = 47
    package static let ambientRaise: UInt64 = 2
    /// Linux 6.13+: `timer_create` takes the id it is given in `*created_timer_id` (CRIU's way
    /// to bring POSIX timers back with their ids). Argument: 0 off, 1 on, 2 query.
    package static let timerCreateRestoreIDs: UInt64 = 77
}

/// `SECURE_NO_SETUID_FIXUP` as a securebits mask: capabilities survive a change of uid.
package let securebitNoSetuidFixup: UInt64 = 1 << 2
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
package let capabilityVersion3: UInt32 = 0x2008_0522
/// `SS_DISABLE`, `SIGEV_THREAD_ID`.
package let altStackDisabled: Int32 = 2
package let sigevThreadID: Int32 = 4

extension Kernel {
    /// Sets the scheduling of thread `tid` (of any process, with privilege).
    /// The corresponding system call is `sched_setattr`.
    package static func setScheduling(_ tid: Int32, _ scheduling: Scheduling) throws(Errno) {
        var words = [UInt64](repeating: 0, count: 6)  // struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes)
        words.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(48), toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: scheduling.policy, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: UInt64(scheduling.resetOnFork ? 1 : 0), toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: scheduling.nice, toByteOffset: 16, as: Int32.self)
            raw.storeBytes(of: scheduling.priority, toByteOffset: 20, as: UInt32.self)
            // runtime of SCHED_OTHER/BATCH (its custom slice since 6.6) is kept only when the
            // thread had one set: the default reads back as the default slice.
            if scheduling.policy == 6 {
                raw.storeBytes(of: scheduling.runtime, toByteOffset: 24, as: UInt64.self)
                raw.storeBytes(of: scheduling.deadline, toByteOffset: 32, as: UInt64.self)
                raw.storeBytes(of: scheduling.period, toByteOffset: 40, as: UInt64.self)
            }
        }
        try check { words.withUnsafeMutableBytes { mitosis_syscall6(314, Int(tid), Int(bitPattern: $0.baseAddress), 0, 0, 0, 0) } }
    }

    /// Whether this kernel lets `timer_create` take a chosen id (`PR_TIMER_CREATE_RESTORE_IDS`,
    /// Linux 6.13+), asked of this process without changing it.
    package static var canRestoreTimerIDs: Bool {
        mitosis_syscall6(Int(SYS_prctl), Int(PrctlOption.timerCreateRestoreIDs), 2, 0, 0, 0, 0) >= 0
    }

    /// The process group and session of `pid`. The corresponding system calls are `getpgid`, `getsid`.
    package static func processGroupAndSession(_ pid: Int32) throws(Errno) -> (group: Int32, session: Int32) {
        (try check { getpgid(pid) }, try check { getsid(pid) })
    }
}


extension Ptrace {
    /// The signals queued for thread `tid` (or, with `shared`, for its whole process), each as
    /// its 128-byte `siginfo_t` in 16 words, oldest first, without dequeuing them. Several
    /// instances of one real-time signal are each listed.
    /// The corresponding request is `PTRACE_PEEKSIGINFO`.
    package static func queuedSignals(_ tid: Int32, shared: Bool) throws(Errno) -> [[UInt64]] {
        var result: [[UInt64]] = []
        var buffer = [UInt64](repeating: 0, count: 16 * 32)
        while true {
            // struct ptrace_peeksiginfo_args { u64 off; u32 flags; s32 nr; }
            var arguments: (UInt64, UInt32, Int32) = (UInt64(result.count), shared ? 1 : 0, 32)
            let count = try Kernel.check {
                buffer.withUnsafeMutableBytes { data in
                    withUnsafeMutablePointer(to: &arguments) { mitosis_ptrace(0x4209, tid, UnsafeMutableRawPointer($0), data.baseAddress) }
                }
            }
            if count == 0 { return result }
            for index in 0..<Int(count) { result.append(Array(buffer[(index * 16)..<(index * 16 + 16)])) }
        }
    }
}

extension Kernel {
    /// A `siginfo_t` as 16 words, the form `Ptrace.queuedSignals` gives.
    package static func signalInfoWords(_ info: siginfo_t) -> [UInt64] {
        withUnsafeBytes(of: info) { raw in (0..<16).map { raw.load(fromByteOffset: $0 * 8, as: UInt64.self) } }
    }
}
