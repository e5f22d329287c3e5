import Foundation

/// What a restore needs beyond memory, registers and descriptors: the kernel's per-process
/// memory-layout fields, the auxiliary vector, the executable, the vDSO's identity, every signal
/// disposition, per-thread kernel pointers (clear_child_tid, robust list), and the mapping flags
/// that `/proc/PID/maps` does not show. Captured while the process is frozen (see
/// `RestoreCapture` in MitosisCheckpoint), stored in the manifest (`restore`, format version 2).
public struct RestoreRecord: Codable, Sendable, Equatable {
    public var bounds: MemoryBounds
    /// `/proc/PID/auxv` as 64-bit words (type, value pairs ending with AT_NULL).
    public var auxv: [UInt64]
    /// The executable's path (`/proc/PID/exe`); `PR_SET_MM_MAP` points the restored mm at it.
    public var executable: String
    public var vdso: VdsoIdentity
    /// The dispositions of signals 1…64, in order.
    public var signalActions: [SignalAction]
    public var threads: [ThreadRestoreState]
    /// The `VmFlags` of each mapping, by start address (from `/proc/PID/smaps`, read right after
    /// the thaw: smaps walks every page table, too slow for the freeze).
    public var mappingFlags: [MappingFlags]
    /// The unread contents and capacity of every pipe the process holds (nil in images taken
    /// before pipes were captured).
    public var pipes: [PipeContents]?
    /// Every socket the process holds, by inode (nil in images taken before sockets were captured).
    public var sockets: [SocketRestoreState]?
    /// Descriptors in flight: carried by messages queued on the process's unix sockets
    /// (`SCM_RIGHTS`) and held by no descriptor of the process. Each is numbered above every
    /// descriptor the process holds; its state is recorded under that number like any other's
    /// (`pipes`, `sockets`, `fileContents`, `timerfds`…). Restore creates them at those numbers,
    /// sends the messages again carrying them, and closes them.
    public var inFlight: [OpenDescriptor]?
    /// Descriptors that share an open file description (offset, flags) with a lower-numbered
    /// one, found by `kcmp(KCMP_FILE)`: restored as a `dup` of it.
    public var sharedDescriptions: [SharedDescription]?
    /// Every timerfd with the time it was read at.
    public var timerfds: [TimerfdRestoreState]?
    /// The content of every memfd and deleted file the process holds open.
    public var fileContents: [FileContents]?
    /// The path of every inotify watch (nil in images taken before watches were captured).
    public var inotifyWatches: [InotifyWatchPath]?
    /// The SysV shared memory segments the process has attached, as `/proc/sysvipc/shm` listed
    /// them (nil in images taken before segments were captured). Their content is in the image
    /// as the memory of the attaching mappings.
    public var sysvSharedMemory: [SysVSharedMemory]?
    /// The seccomp mode and filters its threads run under (nil: none, or an image taken before
    /// they were recorded). Threads under different filters are refused (`seccompDiffers`).
    public var seccomp: SeccompState?
    /// A thread whose seccomp state differs from the main thread's, if any.
    public var seccompDiffers: Int32?
    /// POSIX timers of the process (`/proc/PID/timers` entries): images without `processState`
    /// that count any are refused.
    public var posixTimers: Int
    /// The established TCP connections, captured in repair mode (nil in images taken before
    /// connections were captured).
    public var connections: [CapturedConnection]?
    /// The nftables table (`inet`) that keeps the connections locked after `dump --kill` until
    /// a restore lifts it; nil when none was left (the process kept running, or no lock).
    public var networkLockTable: String?
    /// Timers, credentials' companions, per-thread scheduling and signal stacks (nil in images
    /// taken before they were recorded).
    public var processState: ProcessState?
    /// The process's clocks at the freeze (nil in images taken before they were recorded).
    public var clocks: Clocks?

    public init(bounds: MemoryBounds, auxv: [UInt64], executable: String, vdso: VdsoIdentity,
                signalActions: [SignalAction], threads: [ThreadRestoreState], mappingFlags: [MappingFlags], posixTimers: Int) {
        self.bounds = bounds
        self.auxv = auxv
        self.executable = executable
        self.vdso = vdso
        self.signalActions = signalActions
        self.threads = threads
        self.mappingFlags = mappingFlags
        self.posixTimers = posixTimers
    }

    /// The kernel's `mm_struct` bounds, as `PR_SET_MM_MAP` takes them back.
    public struct MemoryBounds: Codable, Sendable, Equatable {
        public var startCode, endCode, startData, endData: UInt64
        public var startBrk, brk, startStack: UInt64
        public var argStart, argEnd, envStart, envEnd: UInt64

        public init(startCode: UInt64, endCode: UInt64, startData: UInt64, endData: UInt64, startBrk: UInt64, brk: UInt64,
                    startStack: UInt64, argStart: UInt64, argEnd: UInt64, envStart: UInt64, envEnd: UInt64) {
            self.startCode = startCode; self.endCode = endCode; self.startData = startData; self.endData = endData
            self.startBrk = startBrk; self.brk = brk; self.startStack = startStack
            self.argStart = argStart; self.argEnd = argEnd; self.envStart = envStart; self.envEnd = envEnd
        }

        /// Fields 26–28 and 45–51 of `/proc/PID/stat` (`ProcStat.layout`).
        /// `/proc` does not show the current break: `brk` is passed in (injected `brk(0)`).
        /// Nil when the line is truncated or malformed.
        public init?(procStat text: String, brk: UInt64) {
            guard let l = ProcStat(parsing: text)?.layout else { return nil }
            self.init(startCode: l.startCode, endCode: l.endCode, startData: l.startData, endData: l.endData,
                      startBrk: l.startBrk, brk: brk, startStack: l.startStack, argStart: l.argStart, argEnd: l.argEnd,
                      envStart: l.envStart, envEnd: l.envEnd)
        }
    }

    /// Where the kernel put the vDSO and its data pages, and what the vDSO's code was. Glibc
    /// caches pointers into the vDSO, so a restore needs the same code at the same address.
    public struct VdsoIdentity: Codable, Sendable, Equatable {
        /// `[vvar]`, `[vvar_vclock]` (Linux 6.13+; nil before) and `[vdso]`: start and length.
        public var vvar: AddressRange
        public var vvarVclock: AddressRange?
        public var vdso: AddressRange
        /// XXH64 of the vDSO's bytes, 16 hex digits.
        public var xxh64: String

        public init(vvar: AddressRange, vvarVclock: AddressRange?, vdso: AddressRange, xxh64: String) {
            self.vvar = vvar
            self.vvarVclock = vvarVclock
            self.vdso = vdso
            self.xxh64 = xxh64
        }
    }

    public struct AddressRange: Codable, Sendable, Equatable {
        public var start: UInt64
        public var length: UInt64

        public init(start: UInt64, length: UInt64) {
            self.start = start
            self.length = length
        }
    }

    /// One signal's disposition: the kernel's `struct sigaction` for `rt_sigaction(2)` on x86-64.
    public struct SignalAction: Codable, Sendable, Equatable {
        /// `SIG_DFL` (0), `SIG_IGN` (1) or the handler's address.
        public var handler: UInt64
        public var flags: UInt64
        public var restorer: UInt64
        public var mask: UInt64

        public init(handler: UInt64, flags: UInt64, restorer: UInt64, mask: UInt64) {
            self.handler = handler
            self.flags = flags
            self.restorer = restorer
            self.mask = mask
        }
    }

    /// Per-thread kernel pointers that neither ptrace's registers nor /proc show.
    public struct ThreadRestoreState: Codable, Sendable, Equatable {
        public var tid: Int32
        /// `set_tid_address(2)`: the word the kernel clears (and futex-wakes) when the thread exits;
        /// glibc's `pthread_join` waits on it.
        public var clearChildTid: UInt64
        /// `set_robust_list(2)`: the head of the thread's robust futex list and its length.
        public var robustList: UInt64
        public var robustListLength: UInt64

        public init(tid: Int32, clearChildTid: UInt64, robustList: UInt64, robustListLength: UInt64) {
            self.tid = tid
            self.clearChildTid = clearChildTid
            self.robustList = robustList
            self.robustListLength = robustListLength
        }
    }

    /// A pipe's unread bytes at the freeze (read with `tee`, so left in place) and its capacity.
    public struct PipeContents: Codable, Sendable, Equatable {
        /// The pipe's inode, as in `pipe:[N]`.
        public var inode: UInt64
        public var capacity: Int
        public var bytes: Data

        public init(inode: UInt64, capacity: Int, bytes: Data) {
            self.inode = inode
            self.capacity = capacity
            self.bytes = bytes
        }
    }

    /// fd `fd` is the same open file description as fd `sameAs` (lower).
    public struct SharedDescription: Codable, Sendable, Equatable {
        public var fd: Int32
        public var sameAs: Int32

        public init(fd: Int32, sameAs: Int32) {
            self.fd = fd
            self.sameAs = sameAs
        }
    }

    public struct MappingFlags: Codable, Sendable, Equatable {
        public var start: UInt64
        /// The two-letter flags (`gd` grows down, `dd` don't dump, `dc` don't copy, `wf` wipe on
        /// fork, `hg`/`nh` huge pages advised or not, `lo` locked…).
        public var vmFlags: [String]

        public init(start: UInt64, vmFlags: [String]) {
            self.start = start
            self.vmFlags = vmFlags
        }
    }
}

extension GeneralRegisters {
    /// The registers a thread must resume with so that the system call it was blocked in behaves
    /// as the kernel would have made it behave, done as CRIU's compel does at dump time: a call
    /// interrupted with `-ERESTARTSYS`, `-ERESTARTNOINTR` or `-ERESTARTNOHAND` runs again (`rip`
    /// back over the 2-byte `syscall`, `rax` = its number); one interrupted with
    /// `-ERESTART_RESTARTBLOCK` returns `-EINTR`, since the kernel's restart block cannot be saved.
    /// `orig_rax` is -1 either way, so the kernel itself restarts nothing.
    public var resumingInterruptedCall: GeneralRegisters {
        var r = self
        if Int64(bitPattern: origRax) >= 0 {
            switch Int64(bitPattern: rax) {
            case -512, -513, -514:
                r.rax = origRax
                r.rip &-= 2
            case -516:
                r.rax = UInt64(bitPattern: -4)
            default:
                break
            }
        }
        r.origRax = UInt64.max
        return r
    }
}
