import SystemPackage
import MitosisKernel
import MitosisModel

/// Reads one part of a live process's state from `/proc`, without stopping it. Each read is a
/// snapshot of that one file; `Introspector` combines them into a `ProcessModel`.
///
/// Errors: a process that does not exist or exits during the read throws `.noSuchProcess`; a
/// refused read throws `.permissionDenied`.
public enum ProcessReader {
    /// Every mapping of `pid`, with smaps sizes and VmFlags when `detailed` (the default);
    /// from the cheaper `/proc/PID/maps` otherwise.
    public static func mappings(pid: Int32, detailed: Bool = true) throws(MitosisError) -> [MemoryMapping] {
        ProcMaps.parse(try text(pid, detailed ? "smaps" : "maps"))
    }

    /// Who `pid` is: ids, command line, environment, links, credentials.
    public static func identity(pid: Int32) throws(MitosisError) -> ProcessIdentity {
        let stat = try self.stat(pid)
        let status = ProcStatus(parsing: try text(pid, "status"))
        guard let uid = status.credentials("Uid"), let gid = status.credentials("Gid") else {
            throw .noSuchProcess(pid)  // a status without ids is a process caught exiting
        }
        return ProcessIdentity(
            pid: pid, ppid: stat.ppid,
            comm: optionalText(pid, "comm").map { $0.hasSuffix("\n") ? String($0.dropLast()) : $0 } ?? stat.comm,
            state: String(stat.state),
            cmdline: ProcNulList.parse(try bytes(pid, "cmdline")),
            environ: try? ProcNulList.parse(bytes(pid, "environ")),
            exe: try? Kernel.readLink("/proc/\(pid)/exe"), cwd: try? Kernel.readLink("/proc/\(pid)/cwd"),
            root: try? Kernel.readLink("/proc/\(pid)/root"),
            processGroup: stat.processGroup, session: stat.session, ttyNumber: stat.ttyNumber, startTime: stat.startTime,
            uid: uid, gid: gid, groups: status.groups, capabilities: status.capabilities, umask: status["Umask"])
    }

    /// Every thread of `pid`, ascending by tid. Threads that exit while they are read are left out.
    public static func threads(pid: Int32) throws(MitosisError) -> [ThreadInfo] {
        try list(pid, "task").compactMap { Int32($0) }.sorted().compactMap { tid in
            guard let text = optionalText(pid, "task/\(tid)/stat"), let stat = ProcStat(parsing: text) else { return nil }
            return ThreadInfo(tid: tid, name: stat.comm, state: String(stat.state))
        }
    }

    /// The namespaces of `pid`, sorted by type.
    public static func namespaces(pid: Int32) throws(MitosisError) -> [NamespaceInfo] {
        try list(pid, "ns").sorted().compactMap { type in
            (try? Kernel.readLink("/proc/\(pid)/ns/\(type)")).flatMap { ProcNamespace.parse(type: type, link: $0) }
        }
    }

    public static func cgroups(pid: Int32) throws(MitosisError) -> [CgroupEntry] {
        ProcCgroup.parse(try text(pid, "cgroup"))
    }

    public static func limits(pid: Int32) throws(MitosisError) -> [ResourceLimit] {
        ProcLimits.parse(try text(pid, "limits"))
    }

    /// The SysV and POSIX IPC objects `pid` uses, given its `mappings` and `descriptors` (see
    /// `IPCUsage` for how each kind is attributed).
    public static func ipc(pid: Int32, mappings: [MemoryMapping], descriptors: [OpenDescriptor]) -> IPCUsage {
        let posix = descriptors.filter { $0.kind == .messageQueue }
            .map { PosixMessageQueue(fd: $0.fd, name: $0.path ?? $0.target, inode: $0.inode) }
        let ownNamespace = try? Kernel.readLink("/proc/self/ns/ipc")
        guard let ownNamespace, (try? Kernel.readLink("/proc/\(pid)/ns/ipc")) == ownNamespace else {
            return IPCUsage(sysvVisible: false, sharedMemory: [], semaphores: [], messageQueues: [], posixMessageQueues: posix)
        }
        func table(_ name: String) -> String {
            (try? Kernel.readFile("/proc/sysvipc/\(name)")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        }
        let attachments = mappings.filter { $0.kind == .sysvSharedMemory }
        let shared = ProcSysvIPC.sharedMemory(table("shm")).compactMap { segment -> SysVSharedMemory? in
            var segment = segment
            segment.attachedAt = attachments.filter { $0.inode == UInt64(segment.shmid) }.map(\.start)
            let used = !segment.attachedAt.isEmpty || segment.creatorPid == pid || segment.lastPid == pid
            return used ? segment : nil
        }
        let semaphores = ProcSysvIPC.semaphores(table("sem")).compactMap { set -> SysVSemaphoreSet? in
            var set = set
            set.lastOperationPids = (0..<Int32(clamping: set.count)).map { (try? Kernel.semaphoreLastPid(semid: set.semid, index: $0)) ?? 0 }
            return set.lastOperationPids.contains(pid) ? set : nil
        }
        let queues = ProcSysvIPC.messageQueues(table("msg")).filter { $0.lastSendPid == pid || $0.lastReceivePid == pid }
        return IPCUsage(sysvVisible: true, sharedMemory: shared, semaphores: semaphores, messageQueues: queues,
                        posixMessageQueues: posix)
    }

    /// Every open descriptor of `pid`, ascending by number. Descriptors closed while they are
    /// read are left out; if the process itself is gone, `.noSuchProcess`.
    public static func descriptors(pid: Int32) throws(MitosisError) -> [OpenDescriptor] {
        let numbers = try list(pid, "fd").compactMap { Int32($0) }.sorted()
        let directories = try DescriptorDirectories(pid: pid)
        defer { directories.close() }
        var result: [OpenDescriptor] = []
        result.reserveCapacity(numbers.count)
        for fd in numbers {
            if let descriptor = try descriptor(pid: pid, fd: fd, in: directories) { result.append(descriptor) }
        }
        return result
    }

    /// One open descriptor of `pid`; nil when `fd` is not open (or closes while it is read).
    public static func descriptor(pid: Int32, fd: Int32) throws(MitosisError) -> OpenDescriptor? {
        let directories = try DescriptorDirectories(pid: pid)
        defer { directories.close() }
        return try descriptor(pid: pid, fd: fd, in: directories)
    }

    /// `/proc/PID/fd` and `/proc/PID/fdinfo`, opened once so that reading thousands of
    /// descriptors resolves names relative to them rather than walking `/proc/PID/…` each time.
    package struct DescriptorDirectories {
        package let links: FileDescriptor
        package let infos: FileDescriptor

        package init(pid: Int32) throws(MitosisError) {
            let links = try Self.open(pid, "fd")
            do {
                infos = try Self.open(pid, "fdinfo")
            } catch {
                try? links.close()
                throw error
            }
            self.links = links
        }

        private static func open(_ pid: Int32, _ name: String) throws(MitosisError) -> FileDescriptor {
            let path = "/proc/\(pid)/\(name)"
            do {
                return try Kernel.openDirectory(path)
            } catch {
                throw failure(error, pid: pid, reading: path)
            }
        }

        package func close() {
            try? links.close()
            try? infos.close()
        }
    }

    private static func descriptor(pid: Int32, fd: Int32, in directories: DescriptorDirectories) throws(MitosisError) -> OpenDescriptor? {
        let name = String(fd)
        guard let (target, info, status) = try snapshot(pid: pid, name: name, in: directories) else { return nil }
        let device = status.map { DeviceNumber(encoded: $0.device) }
        let mode = status.map(\.mode)
        let special = status.flatMap { $0.type == .characterDevice || $0.type == .blockDevice
            ? DeviceNumber(encoded: $0.specialDevice) : nil }
        var kind = ProcFdTarget.classify(target, mode: mode, specialDevice: special)
        // A regular file on an anonymous-device filesystem may be a POSIX message queue.
        if kind.kind == .file, device?.major == 0,
           (try? Kernel.fileSystemType("/proc/\(pid)/fd/\(fd)")) == Kernel.messageQueueFileSystem {
            kind.kind = .messageQueue
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
    package static func stat(_ pid: Int32) throws(MitosisError) -> ProcStat {
        guard let stat = ProcStat(parsing: try text(pid, "stat")) else { throw .noSuchProcess(pid) }
        return stat
    }

    /// The link target, fdinfo and `stat` of one descriptor, read so that they describe the same
    /// open file. The fd may be closed and its number reused between the reads, so they are read
    /// again until the link is the same before and after, and fdinfo's `ino:` matches stat's.
    /// Limits: a descriptor replaced twice between the two link reads (A, B, A) gives fdinfo and
    /// stat of B with the link of A; one replaced faster than that on every attempt comes without
    /// its `stat`. nil when the fd is not open.
    private static func snapshot(pid: Int32, name: String, in directories: DescriptorDirectories) throws(MitosisError) -> (String, ProcFdinfo, FileStatus?)? {
        var attempt = 0
        while true {
            attempt += 1
            let target: String
            let info: ProcFdinfo
            do {
                target = try Kernel.readLinkAt(directories.links, name)
                guard let parsed = ProcFdinfo(parsing: String(decoding: try Kernel.readFileAt(directories.infos, name), as: UTF8.self))
                else { return nil }
                info = parsed
            } catch .noSuchFileOrDirectory {
                try requireAlive(pid)
                return nil
            } catch {
                throw failure(error, pid: pid, reading: "/proc/\(pid)/fd/\(name)")
            }
            // stat follows the magic link to the open file; it may be refused (a file on a FUSE mount).
            let status = try? Kernel.statusAt(directories.links, name)
            let sameFile = status.map { info.inode == nil || UInt64($0.inode) == info.inode } ?? true
            let sameLink = (try? Kernel.readLinkAt(directories.links, name)) == target
            if sameFile && sameLink { return (target, info, status) }
            if attempt == 8 { return (target, info, nil) }
        }
    }

    /// Throws `.noSuchProcess` unless `pid` still exists and has not exited.
    package static func requireAlive(_ pid: Int32) throws(MitosisError) {
        let state = try stat(pid).state
        if state == "Z" || state == "X" { throw .noSuchProcess(pid) }
    }

    /// The names in `/proc/PID/<directory>`.
    package static func list(_ pid: Int32, _ directory: String) throws(MitosisError) -> [String] {
        let path = "/proc/\(pid)/\(directory)"
        do {
            return try Kernel.listDirectory(path)
        } catch {
            throw failure(error, pid: pid, reading: path)
        }
    }

    /// The text of `/proc/PID/<file>`.
    package static func text(_ pid: Int32, _ file: String) throws(MitosisError) -> String {
        String(decoding: try bytes(pid, file), as: UTF8.self)
    }

    /// The text of `/proc/PID/<file>`, or nil when it cannot be read (a thread that exited).
    package static func optionalText(_ pid: Int32, _ file: String) -> String? {
        try? text(pid, file)
    }

    /// The bytes of `/proc/PID/<file>`.
    package static func bytes(_ pid: Int32, _ file: String) throws(MitosisError) -> [UInt8] {
        let path = "/proc/\(pid)/\(file)"
        do {
            return try Kernel.readFile(path)
        } catch {
            throw failure(error, pid: pid, reading: path)
        }
    }

    /// Translates an errno from reading `path` of `pid` into the error a user can act on.
    package static func failure(_ error: Errno, pid: Int32, reading path: String) -> MitosisError {
        switch error {
        case .noSuchFileOrDirectory, .noSuchProcess: return .noSuchProcess(pid)
        case .permissionDenied, .notPermitted: return .permissionDenied(pid, operation: "read \(path) of")
        default: return .system(operation: "reading \(path)", errno: error)
        }
    }
}
