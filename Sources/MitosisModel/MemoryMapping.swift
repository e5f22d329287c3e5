/// One virtual memory area of a process, as `/proc/PID/maps` and `/proc/PID/smaps` describe it.
public struct MemoryMapping: Equatable, Hashable, Sendable, Codable {
    /// First address of the area.
    public var start: UInt64
    /// One past the last address of the area.
    public var end: UInt64
    /// The four permission letters verbatim: `r`/`-`, `w`/`-`, `x`/`-`, then `p` (private) or `s` (shared).
    public var perms: String
    /// Offset in the backing file (for anonymous memory, the page offset the kernel reports).
    public var offset: UInt64
    /// The backing file's device (`major:minor`; `0:0` for anonymous memory).
    public var device: DeviceNumber
    /// The backing file's inode (0 for anonymous memory; the shmid for SysV shared memory).
    public var inode: UInt64
    /// The file path or the kernel's pseudo name (`[heap]`, `[stack]`, `[vdso]`, `[anon:name]`…),
    /// without the ` (deleted)` suffix; nil for plain anonymous memory.
    public var path: String?
    public var kind: Kind
    /// The backing file was unlinked (the kernel printed ` (deleted)`).
    public var deleted: Bool
    /// Memory accounting from `/proc/PID/smaps`; nil when read from `maps` only.
    public var sizes: MappingSizes?
    /// The two-letter `VmFlags` of `/proc/PID/smaps` (`rd wr mr mw me ac sd`…); nil when read from `maps` only.
    public var vmFlags: [String]?

    public init(start: UInt64, end: UInt64, perms: String, offset: UInt64, device: DeviceNumber, inode: UInt64,
                path: String?, kind: Kind, deleted: Bool, sizes: MappingSizes? = nil, vmFlags: [String]? = nil) {
        self.start = start
        self.end = end
        self.perms = perms
        self.offset = offset
        self.device = device
        self.inode = inode
        self.path = path
        self.kind = kind
        self.deleted = deleted
        self.sizes = sizes
        self.vmFlags = vmFlags
    }

    /// Length of the area in bytes.
    public var length: UInt64 { end &- start }
    public var isReadable: Bool { perms.utf8.first == UInt8(ascii: "r") }
    public var isWritable: Bool { perms.utf8.dropFirst(1).first == UInt8(ascii: "w") }
    public var isExecutable: Bool { perms.utf8.dropFirst(2).first == UInt8(ascii: "x") }
    /// `MAP_SHARED`: writes reach the backing object and other processes mapping it.
    public var isShared: Bool { perms.utf8.dropFirst(3).first == UInt8(ascii: "s") }

    /// What backs a mapping.
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// Private anonymous memory (including `[anon:name]` areas named with `PR_SET_VMA_ANON_NAME`).
        case anonymous
        /// A mapped file (including memfd files, `/memfd:name`).
        case file
        /// `MAP_SHARED | MAP_ANONYMOUS` memory (shown by the kernel as `/dev/zero (deleted)` or `[anon_shmem:name]`).
        case sharedAnonymous = "shared_anonymous"
        /// A SysV shared memory segment attached with `shmat` (`/SYSV<key> (deleted)`; the inode is the shmid).
        case sysvSharedMemory = "sysv_shared_memory"
        case heap
        /// The main thread's stack (`[stack]`; older kernels also showed `[stack:TID]`).
        case stack
        case vdso
        case vvar
        case vsyscall
        /// Any other kernel pseudo name in brackets (`[uprobes]`, `[vvar_vclock]`…); `path` holds it.
        case special
    }
}

/// A device number as `/proc` prints it (`fe:01` → major 254, minor 1).
public struct DeviceNumber: Equatable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var major: UInt32
    public var minor: UInt32

    public init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    /// Splits a kernel `dev_t` (as in `stat.st_dev`) the way glibc's `major()`/`minor()` do.
    public init(encoded dev: UInt64) {
        major = UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)))
        minor = UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)))
    }

    /// Splits a device number as the kernel encodes it internally and prints it in fdinfo
    /// (`sdev:fe00000` → 254:0): 12 bits of major above 20 bits of minor.
    public init(kernel dev: UInt64) {
        major = UInt32(truncatingIfNeeded: dev >> 20)
        minor = UInt32(truncatingIfNeeded: dev & 0xfffff)
    }

    public var description: String { "\(major):\(minor)" }
}

/// The memory accounting lines of one `/proc/PID/smaps` entry, in bytes.
public struct MappingSizes: Equatable, Hashable, Sendable, Codable {
    public var size: UInt64 = 0
    public var kernelPageSize: UInt64 = 0
    public var mmuPageSize: UInt64 = 0
    /// Resident set: bytes of the area in RAM.
    public var rss: UInt64 = 0
    /// Proportional set: resident bytes divided among the processes sharing them.
    public var pss: UInt64 = 0
    public var pssDirty: UInt64 = 0
    public var sharedClean: UInt64 = 0
    public var sharedDirty: UInt64 = 0
    public var privateClean: UInt64 = 0
    public var privateDirty: UInt64 = 0
    public var referenced: UInt64 = 0
    public var anonymous: UInt64 = 0
    public var ksm: UInt64 = 0
    public var lazyFree: UInt64 = 0
    public var anonHugePages: UInt64 = 0
    public var shmemPmdMapped: UInt64 = 0
    public var filePmdMapped: UInt64 = 0
    public var sharedHugetlb: UInt64 = 0
    public var privateHugetlb: UInt64 = 0
    public var swap: UInt64 = 0
    public var swapPss: UInt64 = 0
    public var locked: UInt64 = 0
    /// Lines in `kB` this version does not name (future kernels add some), in file order.
    public var other: [NamedSize] = []

    public init() {}

    /// Stores the value of one `Key: N kB` line.
    package mutating func set(_ key: Substring, bytes: UInt64) {
        switch key {
        case "Size": size = bytes
        case "KernelPageSize": kernelPageSize = bytes
        case "MMUPageSize": mmuPageSize = bytes
        case "Rss": rss = bytes
        case "Pss": pss = bytes
        case "Pss_Dirty": pssDirty = bytes
        case "Shared_Clean": sharedClean = bytes
        case "Shared_Dirty": sharedDirty = bytes
        case "Private_Clean": privateClean = bytes
        case "Private_Dirty": privateDirty = bytes
        case "Referenced": referenced = bytes
        case "Anonymous": anonymous = bytes
        case "KSM": ksm = bytes
        case "LazyFree": lazyFree = bytes
        case "AnonHugePages": anonHugePages = bytes
        case "ShmemPmdMapped": shmemPmdMapped = bytes
        case "FilePmdMapped": filePmdMapped = bytes
        case "Shared_Hugetlb": sharedHugetlb = bytes
        case "Private_Hugetlb": privateHugetlb = bytes
        case "Swap": swap = bytes
        case "SwapPss": swapPss = bytes
        case "Locked": locked = bytes
        default: other.append(NamedSize(name: String(key), bytes: bytes))
        }
    }
}

/// One smaps size line that `MappingSizes` has no field for, under the kernel's own key.
public struct NamedSize: Equatable, Hashable, Sendable, Codable {
    public var name: String
    public var bytes: UInt64

    public init(name: String, bytes: UInt64) {
        self.name = name
        self.bytes = bytes
    }
}
