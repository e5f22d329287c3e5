import SystemPackage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Reads one part of a live process's state from `/proc`, without stopping it. Each read is a
/// snapshot of that one file; `Introspector` combines them into a `ProcessModel`.
///
/// Errors: a process that does not exist or exits during the read throws `.noSuchProcess`; a
/// refused read throws `.permissionDenied`.
public enum ProcessReader {
    /// Every mapping of `pid`, with smaps sizes and VmFlags when `detailed` (the default);
    /// from the cheaper `/proc/PID/maps` otherwise.
    public static func mappings(_ target: TargetProcess, detailed: Bool = true) throws(MitosisError) -> [MemoryMapping] {
        ProcMaps.parse(try target.bytes(detailed ? "smaps" : "maps"))
    }

    /// Who `pid` is: ids, command line, environment, links, credentials.
    public static func identity(_ target: TargetProcess) throws(MitosisError) -> ProcessIdentity {
        let pid = target.pid
        let stat = try self.stat(target)
        let status = ProcStatus(parsing: try target.text("status"))
        guard let uid = status.credentials("Uid"), let gid = status.credentials("Gid") else {
            throw .targetExited(pid)  // a status without ids is a process caught exiting
        }
        return ProcessIdentity(
            pid: pid, ppid: stat.ppid,
            comm: (try? target.text("comm")).map { $0.hasSuffix("\n") ? String($0.dropLast()) : $0 } ?? stat.comm,
            state: String(stat.state),
            cmdline: ProcNulList.parse(try target.bytes("cmdline")),
            environ: try? ProcNulList.parse(target.bytes("environ")),
            exe: try? target.readLink("exe"), cwd: try? target.readLink("cwd"),
            root: try? target.readLink("root"),
            processGroup: stat.processGroup, session: stat.session, ttyNumber: stat.ttyNumber, startTime: stat.startTime,
            uid: uid, gid: gid, groups: status.groups, capabilities: status.capabilities, umask: status["Umask"])
    }

    /// Every thread of `pid`, ascending by tid. Threads that exit while they are read are left out.
    public static func threads(_ target: TargetProcess) throws(MitosisError) -> [ThreadInfo] {
        try target.list("task").compactMap { Int32($0) }.sorted().compactMap { tid in
            guard let text = try? target.text("task/\(tid)/stat"), let stat = ProcStat(parsing: text) else { return nil }
            return ThreadInfo(tid: tid, name: stat.comm, state: String(stat.state))
        }
    }

    /// The namespaces of `pid`, sorted by type.
    public static func namespaces(_ target: TargetProcess) throws(MitosisError) -> [NamespaceInfo] {
        try target.list("ns").sorted().compactMap { type in
            (try? target.readLink("ns/\(type)")).flatMap { ProcNamespace.parse(type: type, link: $0) }
        }
    }

    public static func cgroups(_ target: TargetProcess) throws(MitosisError) -> [CgroupEntry] {
        ProcCgroup.parse(try target.text("cgroup"))
    }

    public static func limits(_ target: TargetProcess) throws(MitosisError) -> [ResourceLimit] {
        ProcLimits.parse(try target.text("limits"))
    }

    /// The SysV and POSIX IPC objects `pid` uses, given its `mappings` and `descriptors` (see
    /// `IPCUsage` for how each kind is attributed).
    public static func ipc(_ target: TargetProcess, mappings: [MemoryMapping], descriptors: [OpenDescriptor]) -> IPCUsage {
        let pid = target.pid
        let posix = descriptors.filter { $0.kind == .messageQueue }
            .map { PosixMessageQueue(fd: $0.fd, name: $0.path ?? $0.target, inode: $0.inode) }
        guard let segments = sharedMemorySegments(target) else {
            return IPCUsage(sysvVisible: false, sharedMemory: [], semaphores: [], messageQueues: [], posixMessageQueues: posix)
        }
        let attachments = mappings.filter { $0.kind == .sysvSharedMemory }
        let shared = segments.compactMap { segment -> SysVSharedMemory? in
            var segment = segment
            segment.attachedAt = attachments.filter { $0.inode == UInt64(segment.shmid) }.map(\.start)
            let used = !segment.attachedAt.isEmpty || segment.creatorPid == pid || segment.lastPid == pid
            return used ? segment : nil
        }
        let semaphores = ProcSysvIPC.semaphores(sysvTable("sem")).compactMap { set -> SysVSemaphoreSet? in
            var set = set
            set.lastOperationPids = (0..<Int32(clamping: set.count)).map { (try? Kernel.semaphoreLastPid(semid: set.semid, index: $0)) ?? 0 }
            return set.lastOperationPids.contains(pid) ? set : nil
        }
        let queues = ProcSysvIPC.messageQueues(sysvTable("msg")).filter { $0.lastSendPid == pid || $0.lastReceivePid == pid }
        return IPCUsage(sysvVisible: true, sharedMemory: shared, semaphores: semaphores, messageQueues: queues,
                        posixMessageQueues: posix)
    }

    /// Every SysV shared memory segment of `target`'s IPC namespace; nil when that is not
    /// Mitosis's own (`/proc/sysvipc` shows only the reader's namespace).
    package static func sharedMemorySegments(_ target: TargetProcess) -> [SysVSharedMemory]? {
        guard let own = try? Kernel.readLink("/proc/self/ns/ipc"), (try? target.readLink("ns/ipc")) == own else { return nil }
        return ProcSysvIPC.sharedMemory(sysvTable("shm"))
    }

    /// The text of `/proc/sysvipc/<name>` (empty when unreadable).
    private static func sysvTable(_ name: String) -> String {
        (try? Kernel.readFile("/proc/sysvipc/\(name)")).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Every open descriptor of `pid`, ascending by number. Descriptors closed while they are
    /// read are left out; if the process itself is gone, `.noSuchProcess`.
    public static func descriptors(_ target: TargetProcess) throws(MitosisError) -> [OpenDescriptor] {
        try descriptorsAndOpenFiles(target).descriptors
    }

    /// Every open descriptor and, when the kernel's iterator read them, the open file
    /// description of each (its kernel address, index for index): descriptors with equal
    /// addresses share one, as `kcmp(KCMP_FILE)` would say.
    package static func descriptorsAndOpenFiles(_ target: TargetProcess, kernels: DescriptorIterator.Kernels = .verified) throws(MitosisError) -> (descriptors: [OpenDescriptor], openFiles: [UInt64]?) {
        if let all = try descriptorsInOnePass(target, kernels: kernels) { return all }
        return (try descriptorsFromProc(target), nil)
    }

    /// Every descriptor from `/proc/PID/fd` and `fdinfo`, one at a time.
    package static func descriptorsFromProc(_ target: TargetProcess) throws(MitosisError) -> [OpenDescriptor] {
        let numbers = try target.list("fd").compactMap { Int32($0) }.sorted()
        let directories = try DescriptorDirectories(target)
        defer { directories.close() }
        var result: [OpenDescriptor] = []
        result.reserveCapacity(numbers.count)
        for fd in numbers {
            if let descriptor = try descriptor(target, fd: fd, in: directories) { result.append(descriptor) }
        }
        return result
    }

    /// One open descriptor of `pid`; nil when `fd` is not open (or closes while it is read).
    public static func descriptor(_ target: TargetProcess, fd: Int32) throws(MitosisError) -> OpenDescriptor? {
        let directories = try DescriptorDirectories(target)
        defer { directories.close() }
        return try descriptor(target, fd: fd, in: directories)
    }

    /// `/proc/PID/fd` and `/proc/PID/fdinfo`, opened once so that reading thousands of
    /// descriptors resolves names relative to them rather than walking `/proc/PID/…` each time,
    /// and what one pass over them learns once: a buffer for fdinfo, the device of each
    /// pseudo filesystem, the type of each filesystem.
    package final class DescriptorDirectories {
        package let links: FileDescriptor
        package let infos: FileDescriptor
        /// fdinfo is read into this, reused for every descriptor.
        var buffer: [UInt8] = []
        /// Device of the pseudo filesystem behind each kind of inode-naming link (`pipe:`,
        /// `socket:`, `anon_inode:[eventfd]`…): each is one superblock (pipefs, sockfs,
        /// anon_inodefs, pidfs), so one `stat` tells the device of every such descriptor.
        var pseudoDevices: [String: UInt64] = [:]
        /// `statfs` type of each device that held a file, to tell message queues from files.
        var fileSystemTypes: [UInt64: Int] = [:]

        package init(_ target: TargetProcess) throws(MitosisError) {
            let links = try target.openDirectory("fd")
            do {
                infos = try target.openDirectory("fdinfo")
            } catch {
                try? links.close()
                throw error
            }
            self.links = links
        }

        package func close() {
            try? links.close()
            try? infos.close()
        }
    }

    /// Every descriptor from the kernel's task/file iterator (`DescriptorIterator`): one pass
    /// instead of a lookup, open and read per descriptor. Descriptors whose fdinfo carries state
    /// of their kind (eventfd counter, epoll watches…), whose link the kernel could not print, or
    /// on a filesystem whose `stat` may differ from its inode's numbers are read from /proc as
    /// before. nil when the iterator is unavailable, or found no descriptor (a thread caught
    /// exiting: /proc tells).
    package static func descriptorsInOnePass(_ target: TargetProcess, kernels: DescriptorIterator.Kernels = .verified) throws(MitosisError) -> (descriptors: [OpenDescriptor], openFiles: [UInt64])? {
        guard let records = DescriptorIterator.records(tid: target.process.entry, kernels: kernels), !records.isEmpty else { return nil }
        var directories: DescriptorDirectories?
        defer { directories?.close() }
        var result: [OpenDescriptor] = [], openFiles: [UInt64] = []
        result.reserveCapacity(records.count)
        openFiles.reserveCapacity(records.count)
        // Whether this kernel's fdinfo prints `eventfd-semaphore:`, learnt from the first eventfd
        // read from /proc; false once a record disagreed with /proc (every eventfd is then read there).
        var eventfds: EventfdLines = .unknown
        for record in records {
            if let fromRecord = Self.descriptor(record, eventfds: eventfds) {
                result.append(fromRecord)
            } else {
                if directories == nil { directories = try DescriptorDirectories(target) }
                guard let fromProc = try Self.descriptor(target, fd: record.fd, in: directories!) else { continue }
                if eventfds == .unknown, case .eventfd(let state) = fromProc.state {
                    // The record must say what /proc said (its counter may have moved since).
                    let lines: EventfdLines = state.semaphore == nil ? .withoutSemaphore : .withSemaphore
                    var recorded = Self.descriptor(record, eventfds: lines)
                    let recordedState = recorded?.eventfd
                    recorded?.state = recordedState.map { .eventfd(EventfdState(counter: state.counter, id: $0.id, semaphore: $0.semaphore)) }
                    eventfds = recorded == fromProc ? lines : .fromProc
                }
                result.append(fromProc)
            }
            openFiles.append(record.openFile)
        }
        // The thread whose table was read belonged to the target throughout: it is still alive.
        try target.requireAlive()
        return (result, openFiles)
    }

    /// Filesystems whose `stat` reports the inode's own number and its superblock's device
    /// (`generic_fillattr`), so the iterator's numbers are what /proc's `stat` would give: ext4,
    /// tmpfs/shmem, ramfs, devpts, proc, sysfs, cgroup2, mqueue, nsfs and the pseudo filesystems of
    /// pipes, sockets, anonymous inodes and pidfds. Others (overlayfs, btrfs, FUSE, NFS…) are stat'ed.
    private static let plainStatFileSystems: Set<UInt64> = [
        0xEF53, 0x0102_1994, 0x8584_58F6, 0x1CD1, 0x9FA0, 0x6265_6572, 0x6367_7270, 0x1980_0202, 0x6E73_6673,
        0x5049_5045, 0x534F_434B, 0x0904_1934, 0x5049_4446,
    ]

    /// Which lines an eventfd's fdinfo has on this kernel (`eventfd-semaphore:` since 6.4), so
    /// that an eventfd made from a record says what /proc would: unknown until one was read there.
    package enum EventfdLines: Sendable {
        case unknown, withSemaphore, withoutSemaphore
        /// A record disagreed with /proc: eventfds are read from /proc.
        case fromProc
    }

    /// One descriptor from its iterator record alone; nil when /proc must be read for it.
    package static func descriptor(_ record: DescriptorIterator.Record, eventfds: EventfdLines = .unknown) -> OpenDescriptor? {
        guard let target = record.target, plainStatFileSystems.contains(record.fileSystemMagic) else { return nil }
        let fileType = record.mode & 0o170000
        let special = fileType == 0o020000 || fileType == 0o060000 ? record.specialDevice : nil
        var kind = ProcFdTarget.classify(target, mode: record.mode, specialDevice: special)
        var state: OpenDescriptor.State?
        switch kind.kind {
        case .eventfd:
            guard let eventfd = record.eventfd else { return nil }
            switch eventfds {
            case .withSemaphore: state = .eventfd(EventfdState(counter: eventfd.counter, id: Int(eventfd.id), semaphore: eventfd.semaphore))
            case .withoutSemaphore: state = .eventfd(EventfdState(counter: eventfd.counter, id: Int(eventfd.id)))
            case .unknown, .fromProc: return nil
            }
        case .epoll, .signalfd, .timerfd, .inotify, .fanotify, .pidfd: return nil  // state only fdinfo prints
        default: break
        }
        if kind.kind == .file, record.device.major == 0, record.fileSystemMagic == UInt64(Kernel.messageQueueFileSystem) {
            kind.kind = .messageQueue
        }
        var descriptor = OpenDescriptor(
            fd: record.fd, kind: kind.kind, target: target, path: kind.path, anonInodeName: kind.anonInodeName,
            inode: record.inode, device: record.device, specialDevice: special, position: record.position,
            flags: record.flags, mountId: record.mountId, deleted: kind.deleted)
        if let state { descriptor.state = state }
        return descriptor
    }

    private static func descriptor(_ process: TargetProcess, fd: Int32, in directories: DescriptorDirectories) throws(MitosisError) -> OpenDescriptor? {
        let name = String(fd)
        guard let snapshot = try snapshot(process, name: name, in: directories) else { return nil }
        let (target, info) = (snapshot.target, snapshot.info)
        let status = snapshot.status
        let device = (status?.device ?? snapshot.pseudoDevice).map { DeviceNumber(encoded: $0) }
        let mode = status.map(\.mode)
        let special = status.flatMap { $0.type == .characterDevice || $0.type == .blockDevice
            ? DeviceNumber(encoded: $0.specialDevice) : nil }
        var kind = ProcFdTarget.classify(target, mode: mode, specialDevice: special)
        // A regular file on an anonymous-device filesystem may be a POSIX message queue.
        if kind.kind == .file, let status, device?.major == 0 {
            let type = directories.fileSystemTypes[status.device]
                ?? (try? Kernel.fileSystemType("/proc/\(process.process.entry)/fd/\(fd)"))
            if let type {
                directories.fileSystemTypes[status.device] = type
                if type == Kernel.messageQueueFileSystem { kind.kind = .messageQueue }
            }
        }
        var descriptor = OpenDescriptor(
            fd: fd, kind: kind.kind, target: target, path: kind.path, anonInodeName: kind.anonInodeName,
            inode: status.map { UInt64($0.inode) } ?? info.inode ?? kind.inode ?? 0,
            device: device, specialDevice: special, position: info.position, flags: info.flags,
            mountId: info.mountId, deleted: kind.deleted)
        descriptor.state = info.state(of: kind.kind)
        return descriptor
    }

    /// `/proc/PID/stat`; `.noSuchProcess` when it is gone or unparsable.
    package static func stat(_ target: TargetProcess) throws(MitosisError) -> ProcStat {
        guard let stat = ProcStat(parsing: try target.text("stat")) else { throw .noSuchProcess(target.pid) }
        return stat
    }

    /// What was read of one descriptor: its link, its fdinfo, and either its `stat` or, for
    /// an object on a pseudo filesystem (pipe, socket, anonymous inode), that filesystem's device.
    private struct Snapshot {
        var target: String
        var info: ProcFdinfo
        var status: FileStatus?
        var pseudoDevice: UInt64?
    }

    /// The link target, fdinfo and `stat` of one descriptor, read so that they describe the same
    /// open file. The fd may be closed and its number reused between the reads, so they are read
    /// again until the link is the same before and after, and fdinfo's `ino:` matches stat's.
    ///
    /// Fewer system calls where the link itself proves the file: `pipe:[N]` and `socket:[N]`
    /// name their inode, so fdinfo's `ino:` equal to N shows fdinfo read the same object and
    /// neither `stat` nor a second link read is needed; for those and anonymous inodes the
    /// device is the pseudo filesystem's, learnt by one `stat` per pass (see
    /// `DescriptorDirectories.pseudoDevices`).
    /// Limits: a descriptor replaced twice between the two link reads (A, B, A) gives fdinfo and
    /// stat of B with the link of A; one replaced faster than that on every attempt comes without
    /// its `stat`. nil when the fd is not open.
    private static func snapshot(_ process: TargetProcess, name: String, in directories: DescriptorDirectories) throws(MitosisError) -> Snapshot? {
        var attempt = 0
        while true {
            attempt += 1
            let target: String
            let info: ProcFdinfo
            do {
                target = try Kernel.readLinkAt(directories.links, name)
                let length = try Kernel.readOnePieceFileAt(directories.infos, name, into: &directories.buffer)
                guard let parsed = ProcFdinfo(parsing: String(decoding: directories.buffer[0..<length], as: UTF8.self))
                else { return nil }
                info = parsed
            } catch .noSuchFileOrDirectory {
                try requireAlive(process)
                return nil
            } catch {
                throw process.failure(error, reading: "fd/\(name)")
            }
            if let inode = info.inode, let pseudo = pseudoFileSystemKey(target) {
                let named = ProcFdTarget.bracketed(target, prefix: pseudo)
                if let device = directories.pseudoDevices[pseudo] {
                    if named == inode { return Snapshot(target: target, info: info, pseudoDevice: device) }
                    if named == nil, (try? Kernel.readLinkAt(directories.links, name)) == target {
                        return Snapshot(target: target, info: info, pseudoDevice: device)
                    }
                    if attempt == 8 { return Snapshot(target: target, info: info) }
                    continue
                }
                // The first of its kind in this pass: read as any other, and its device learnt.
            }
            // stat follows the magic link to the open file; it may be refused (a file on a FUSE mount).
            let status = try? Kernel.statusAt(directories.links, name)
            let sameFile = status.map { info.inode == nil || UInt64($0.inode) == info.inode } ?? true
            let sameLink = (try? Kernel.readLinkAt(directories.links, name)) == target
            if sameFile && sameLink {
                if let status, let pseudo = pseudoFileSystemKey(target), info.inode == UInt64(status.inode) {
                    directories.pseudoDevices[pseudo] = status.device
                }
                return Snapshot(target: target, info: info, status: status)
            }
            if attempt == 8 { return Snapshot(target: target, info: info) }
        }
    }

    /// For a link naming an object on a one-superblock pseudo filesystem, the part that tells
    /// which filesystem: `pipe:`, `socket:`, or the whole `anon_inode:…` link; nil otherwise.
    private static func pseudoFileSystemKey(_ target: String) -> String? {
        if target.hasPrefix("pipe:[") { return "pipe:" }
        if target.hasPrefix("socket:[") { return "socket:" }
        if target.hasPrefix("anon_inode:") { return target }
        return nil
    }

    /// Throws unless the process still exists and has not exited.
    package static func requireAlive(_ target: TargetProcess) throws(MitosisError) {
        try target.requireAlive()
        let state = try stat(target).state
        if state == "Z" || state == "X" { throw .noSuchProcess(target.pid) }
    }
}
