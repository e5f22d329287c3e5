/// Everything `/proc` tells about one process at one moment, as plain values. `Introspector`
/// reads it without stopping the process, so each part is a consistent snapshot of itself but
/// the parts may be microseconds apart.
public struct ProcessModel: Equatable, Sendable, Codable {
    public var pid: Int32
    public var identity: ProcessIdentity
    public var threads: [ThreadInfo]
    public var namespaces: [NamespaceInfo]
    public var cgroups: [CgroupEntry]
    public var limits: [ResourceLimit]
    /// Every memory mapping, ascending by address.
    public var maps: [MemoryMapping]
    /// Every open descriptor, ascending by number.
    public var fds: [OpenDescriptor]
    public var ipc: IPCUsage

    public init(pid: Int32, identity: ProcessIdentity, threads: [ThreadInfo], namespaces: [NamespaceInfo],
                cgroups: [CgroupEntry], limits: [ResourceLimit], maps: [MemoryMapping], fds: [OpenDescriptor], ipc: IPCUsage) {
        self.pid = pid
        self.identity = identity
        self.threads = threads
        self.namespaces = namespaces
        self.cgroups = cgroups
        self.limits = limits
        self.maps = maps
        self.fds = fds
        self.ipc = ipc
    }
}

/// Who the process is: ids, command line, environment, credentials.
public struct ProcessIdentity: Equatable, Sendable, Codable {
    public var pid: Int32
    public var ppid: Int32
    /// The command name (`/proc/PID/comm`, at most 15 bytes; may hold spaces and parentheses).
    public var comm: String
    /// The scheduler state letter (`R`, `S`, `D`, `T`, `t`…).
    public var state: String
    /// The arguments, split at NUL bytes (empty for a process that cleared its command line).
    public var cmdline: [String]
    /// The environment as `NAME=value` strings, as the process started with it; nil when unreadable.
    public var environ: [String]?
    /// The executable, current directory and root directory links; nil when unreadable.
    public var exe: String?
    public var cwd: String?
    public var root: String?
    public var processGroup: Int32
    public var session: Int32
    /// The controlling terminal as the kernel's `tty_nr` (0 when none).
    public var ttyNumber: Int32
    /// Start time in clock ticks since boot: with the pid, it names this process uniquely.
    public var startTime: UInt64
    public var uid: Credentials
    public var gid: Credentials
    public var groups: [UInt32]
    /// nil when the kernel prints an incomplete set (before 4.3, no `CapAmb:`).
    public var capabilities: Capabilities?
    /// `umask` as four octal digits (`0022`); nil on kernels before 4.7.
    public var umask: String?

    package init(
        pid: Int32,
        ppid: Int32,
        comm: String,
        state: String,
        cmdline: [String],
        environ: [String]? = nil,
        exe: String? = nil,
        cwd: String? = nil,
        root: String? = nil,
        processGroup: Int32,
        session: Int32,
        ttyNumber: Int32,
        startTime: UInt64,
        uid: Credentials,
        gid: Credentials,
        groups: [UInt32],
        capabilities: Capabilities? = nil,
        umask: String? = nil
    ) {
        self.pid = pid
        self.ppid = ppid
        self.comm = comm
        self.state = state
        self.cmdline = cmdline
        self.environ = environ
        self.exe = exe
        self.cwd = cwd
        self.root = root
        self.processGroup = processGroup
        self.session = session
        self.ttyNumber = ttyNumber
        self.startTime = startTime
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.capabilities = capabilities
        self.umask = umask
    }
}

/// The four ids of `Uid:`/`Gid:` in `/proc/PID/status`.
public struct Credentials: Equatable, Sendable, Codable {
    public var real: UInt32
    public var effective: UInt32
    public var saved: UInt32
    public var filesystem: UInt32

    public init(real: UInt32, effective: UInt32, saved: UInt32, filesystem: UInt32) {
        self.real = real
        self.effective = effective
        self.saved = saved
        self.filesystem = filesystem
    }
}

/// The capability sets of `/proc/PID/status`, as the kernel prints them (16 hex digits).
public struct Capabilities: Equatable, Sendable, Codable {
    public var inheritable: String
    public var permitted: String
    public var effective: String
    public var bounding: String
    public var ambient: String

    public init(inheritable: String, permitted: String, effective: String, bounding: String, ambient: String) {
        self.inheritable = inheritable
        self.permitted = permitted
        self.effective = effective
        self.bounding = bounding
        self.ambient = ambient
    }
}

/// One thread of the process.
public struct ThreadInfo: Equatable, Sendable, Codable {
    public var tid: Int32
    /// The thread's name (`comm`; threads inherit the process's unless renamed).
    public var name: String
    /// The scheduler state letter.
    public var state: String

    public init(tid: Int32, name: String, state: String) {
        self.tid = tid
        self.name = name
        self.state = state
    }
}

/// One namespace the process is in: `/proc/PID/ns/<type>` → `<type>:[<inode>]`.
public struct NamespaceInfo: Equatable, Sendable, Codable {
    /// `cgroup`, `ipc`, `mnt`, `net`, `pid`, `pid_for_children`, `time`, `time_for_children`, `user`, `uts`.
    public var type: String
    /// The namespace's inode: two processes share the namespace exactly when these are equal.
    public var inode: UInt64

    public init(type: String, inode: UInt64) {
        self.type = type
        self.inode = inode
    }
}

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
public struct CgroupEntry: Equatable, Sendable, Codable {
    /// 0 for the cgroup v2 unified hierarchy.
    public var hierarchy: Int
    /// The v1 controllers of the hierarchy (`cpu`, `memory`, `name=systemd`); empty for v2.
    public var controllers: [String]
    public var path: String

    public init(hierarchy: Int, controllers: [String], path: String) {
        self.hierarchy = hierarchy
        self.controllers = controllers
        self.path = path
    }
}

/// One line of `/proc/PID/limits`.
public struct ResourceLimit: Equatable, Sendable, Codable {
    /// The kernel's description (`Max open files`).
    public var name: String
    /// nil means unlimited (encoded as JSON `null`).
    public var soft: UInt64?
    public var hard: UInt64?
    /// `seconds`, `bytes`, `processes`, `files`, `signals`, `us`; nil for unit-less limits.
    public var units: String?

    public init(name: String, soft: UInt64?, hard: UInt64?, units: String?) {
        self.name = name
        self.soft = soft
        self.hard = hard
        self.units = units
    }

    private enum CodingKeys: String, CodingKey { case name, soft, hard, units }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(soft, forKey: .soft)  // null = unlimited, so written even when nil
        try container.encode(hard, forKey: .hard)
        try container.encodeIfPresent(units, forKey: .units)
    }
}

/// The System V and POSIX IPC objects the process uses.
///
/// `/proc/sysvipc/*` lists the objects of the *reader's* IPC namespace: when the process lives in
/// another one, the SysV lists are empty and `sysvVisible` is false.
public struct IPCUsage: Equatable, Sendable, Codable {
    /// Whether the process shares Mitosis's IPC namespace, so that SysV objects could be matched.
    public var sysvVisible: Bool
    /// Segments the process has attached (from its maps), created (`cpid`) or last attached or
    /// detached (`lpid`).
    public var sharedMemory: [SysVSharedMemory]
    /// Semaphore sets where the process made the last `semop` on at least one semaphore (the
    /// kernel records no creator pid for semaphores, so a set the process created but never
    /// operated on is not found).
    public var semaphores: [SysVSemaphoreSet]
    /// Message queues the process last sent to or received from (`lspid`/`lrpid`; the kernel
    /// records no creator pid for queues either).
    public var messageQueues: [SysVMessageQueue]
    /// POSIX message queues the process holds open (descriptors on the mqueue filesystem).
    public var posixMessageQueues: [PosixMessageQueue]

    public init(sysvVisible: Bool, sharedMemory: [SysVSharedMemory], semaphores: [SysVSemaphoreSet],
                messageQueues: [SysVMessageQueue], posixMessageQueues: [PosixMessageQueue]) {
        self.sysvVisible = sysvVisible
        self.sharedMemory = sharedMemory
        self.semaphores = semaphores
        self.messageQueues = messageQueues
        self.posixMessageQueues = posixMessageQueues
    }
}

/// A SysV shared memory segment (a row of `/proc/sysvipc/shm`) and where the process maps it.
public struct SysVSharedMemory: Equatable, Sendable, Codable {
    public var key: Int32
    public var shmid: Int32
    /// Permission bits and `SHM_DEST`/`SHM_LOCKED` flags as the kernel prints them (octal).
    public var perms: UInt32
    public var size: UInt64
    /// The creator's pid and the pid of the last `shmat`/`shmdt`.
    public var creatorPid: Int32
    public var lastPid: Int32
    /// How many attachments exist, in all processes.
    public var attachCount: UInt64
    public var uid: UInt32
    public var gid: UInt32
    /// Start addresses of this process's attachments (mappings `/SYSV<key>` with inode = shmid).
    public var attachedAt: [UInt64]

    package init(
        key: Int32,
        shmid: Int32,
        perms: UInt32,
        size: UInt64,
        creatorPid: Int32,
        lastPid: Int32,
        attachCount: UInt64,
        uid: UInt32,
        gid: UInt32,
        attachedAt: [UInt64]
    ) {
        self.key = key
        self.shmid = shmid
        self.perms = perms
        self.size = size
        self.creatorPid = creatorPid
        self.lastPid = lastPid
        self.attachCount = attachCount
        self.uid = uid
        self.gid = gid
        self.attachedAt = attachedAt
    }
}

/// A SysV semaphore set (a row of `/proc/sysvipc/sem`).
public struct SysVSemaphoreSet: Equatable, Sendable, Codable {
    public var key: Int32
    public var semid: Int32
    public var perms: UInt32
    public var count: Int
    public var uid: UInt32
    public var gid: UInt32
    /// For each semaphore, the pid of the last `semop` on it (`semctl(GETPID)`; 0 when none).
    public var lastOperationPids: [Int32]

    package init(
        key: Int32,
        semid: Int32,
        perms: UInt32,
        count: Int,
        uid: UInt32,
        gid: UInt32,
        lastOperationPids: [Int32]
    ) {
        self.key = key
        self.semid = semid
        self.perms = perms
        self.count = count
        self.uid = uid
        self.gid = gid
        self.lastOperationPids = lastOperationPids
    }
}

/// A SysV message queue (a row of `/proc/sysvipc/msg`).
public struct SysVMessageQueue: Equatable, Sendable, Codable {
    public var key: Int32
    public var msqid: Int32
    public var perms: UInt32
    public var bytes: UInt64
    public var messages: UInt64
    public var lastSendPid: Int32
    public var lastReceivePid: Int32
    public var uid: UInt32
    public var gid: UInt32

    package init(
        key: Int32,
        msqid: Int32,
        perms: UInt32,
        bytes: UInt64,
        messages: UInt64,
        lastSendPid: Int32,
        lastReceivePid: Int32,
        uid: UInt32,
        gid: UInt32
    ) {
        self.key = key
        self.msqid = msqid
        self.perms = perms
        self.bytes = bytes
        self.messages = messages
        self.lastSendPid = lastSendPid
        self.lastReceivePid = lastReceivePid
        self.uid = uid
        self.gid = gid
    }
}

/// A POSIX message queue held open by the process.
public struct PosixMessageQueue: Equatable, Sendable, Codable {
    public var fd: Int32
    /// The queue's name as given to `mq_open` (`/name`).
    public var name: String
    public var inode: UInt64

    package init(fd: Int32, name: String, inode: UInt64) {
        self.fd = fd
        self.name = name
        self.inode = inode
    }
}
