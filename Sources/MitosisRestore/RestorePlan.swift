import MitosisImage
import MitosisKernel
import MitosisModel
import SystemPackage

/// What a restore of one image will do, and what it refuses: decided before any process exists.
struct RestorePlan: Sendable {
    let manifest: CheckpointManifest
    let record: RestoreRecord
    /// Thread ids as this process sees them, by the image's tid: the same unless the process is
    /// restored inside a new pid namespace. Filled as the husk's threads are created.
    var hostTids: [Int32: Int32] = [:]
    /// Restored inside a new pid namespace (`--pidns`).
    var newPidNamespace = false
    /// A member of a restored tree: what it shares with the other members (`TreeRestorer`).
    var tree: TreeLinks?
    /// Restored inside a time namespace of its own whose clocks continue from the checkpoint's.
    var timeNamespace = false
    /// SysV segments whose content comes from the image (see `SharedMemorySegments`).
    var sharedMemoryFilled: Set<Int32> = []

    /// The SysV segment id of the mapping at `start` (its maps inode).
    func segmentId(at start: UInt64) -> Int32? {
        manifest.process?.maps.first { $0.start == start && $0.kind == .sysvSharedMemory }.map { Int32(truncatingIfNeeded: $0.inode) }
    }

    /// The id this process uses for the image's thread `tid` (ptrace, /proc, injection).
    func host(_ tid: Int32) -> Int32 { hostTids[tid] ?? tid }

    /// Character devices that hold no state, so that opening them again restores them.
    static let statelessDevices: Set<String> = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]

    /// Every reason this image cannot be restored on this host now; empty when it can.
    /// `tree`: what the other members of a tree hold (their pipe ends, sockets, pipe contents).
    static func refusals(_ manifest: CheckpointManifest, tree: TreeHoldings? = nil) -> [RestoreRefusal] {
        let pid = manifest.pid
        let leaderExited = RestoreRefusal("thread \(pid)", "the main thread had exited; restoring a process without it is not supported")
        guard manifest.formatVersion >= 2, let record = manifest.restore else {
            // A checkpoint records no restore state for a process whose main thread exited
            // (nothing can be injected into it): that, not the format, is the reason.
            if manifest.formatVersion >= 2 && !manifest.threads.contains(where: { $0.tid == pid }) { return [leaderExited] }
            return [RestoreRefusal("image", "format version \(manifest.formatVersion) records no restore state (signal handlers, mm bounds, vDSO…); checkpoint the process again with this mitosis")]
        }
        var refusals: [RestoreRefusal] = []
        if manifest.pageSize != CheckpointHeader.systemPageSize {
            refusals.append(RestoreRefusal("image", "page size \(manifest.pageSize), this system's is \(CheckpointHeader.systemPageSize)"))
        }
        if !manifest.threads.contains(where: { $0.tid == pid }) { refusals.append(leaderExited) }
        if Set(manifest.threads.map(\.tid)) != Set(record.threads.map(\.tid)) {
            refusals.append(RestoreRefusal("image", "thread states and restore records name different threads"))
        }
        // The registers' XSAVE areas hold what the CPU enabled there: this one must enable it too.
        let xcr0 = Kernel.enabledXsaveFeatures
        if let needed = manifest.threads.first?.extendedState.enabledFeatures, needed & ~xcr0 != 0 {
            refusals.append(RestoreRefusal("CPU", "the image uses XSAVE components 0x\(String(needed, radix: 16)), this CPU enables 0x\(String(xcr0, radix: 16))"))
        }
        if let problem = vdsoProblem(record.vdso) { refusals.append(RestoreRefusal("vDSO", problem)) }
        if record.auxv.count * 8 > 1024 { refusals.append(RestoreRefusal("auxv", "\(record.auxv.count) words, more than the kernel keeps")) }
        if !fileExists(record.executable) {
            refusals.append(RestoreRefusal("executable", "\(record.executable) does not exist here"))
        }
        refusals += processStateProblems(manifest, record)
        if let problem = record.clocks?.problem { refusals.append(RestoreRefusal("clocks", problem)) }
        if let tid = record.seccompDiffers {
            refusals.append(RestoreRefusal("thread \(tid)", "it runs under other seccomp filters than the main thread: not restorable yet"))
        }
        let deleted = Set(manifest.process?.maps.filter(\.deleted).map(\.start) ?? [])
        let segments = Dictionary((manifest.process?.maps ?? []).filter { $0.kind == .sysvSharedMemory }
            .map { ($0.start, Int32(truncatingIfNeeded: $0.inode)) }, uniquingKeysWith: { a, _ in a })
        let liveSegments = segments.isEmpty ? [] : (try? Kernel.sharedMemorySegments()) ?? []
        for mapping in manifest.mappings {
            var problem = mappingProblem(mapping, deleted: deleted.contains(mapping.start))
            if MemoryMapping.Kind(rawValue: mapping.kind) == .sysvSharedMemory {
                let shmid = segments[mapping.start] ?? -1
                problem = SharedMemorySegments.problem(record.sysvSharedMemory?.first { $0.shmid == shmid }, shmid: shmid,
                                                       mapping: mapping, live: liveSegments)
            }
            if let reason = problem {
                refusals.append(RestoreRefusal("mapping 0x\(String(mapping.start, radix: 16))-0x\(String(mapping.end, radix: 16)) \(mapping.path ?? "[anonymous]")", reason))
            }
        }
        // Descriptors in flight (carried by queued unix messages) are restored like the rest;
        // their subject names them as in flight (their numbers are the image's own).
        let inFlight = record.inFlight ?? []
        let all = (manifest.descriptors ?? []) + inFlight
        let flying = Set(inFlight.map(\.fd))
        func subject(_ descriptor: OpenDescriptor) -> String {
            flying.contains(descriptor.fd) ? "a descriptor in flight (\(descriptor.target))" : "fd \(descriptor.fd) (\(descriptor.target))"
        }
        if let lowest = flying.min(), lowest <= (manifest.descriptors ?? []).map(\.fd).max() ?? -1 {
            refusals.append(RestoreRefusal("image", "descriptors in flight numbered from \(lowest), not above every descriptor of the process"))
        }
        let pipes = Dictionary(grouping: all.filter { $0.kind == .pipe }, by: \.inode)
        for descriptor in all {
            if flying.contains(descriptor.fd), descriptor.kind == .epoll {
                refusals.append(RestoreRefusal(subject(descriptor), "an epoll in flight: its watches name descriptors of the process that sent it; not restorable"))
                continue
            }
            if descriptor.kind == .pipe {
                let ends = Set(pipes[descriptor.inode, default: []].map { $0.flags & 3 }).union(tree?.pipeEnds[descriptor.inode] ?? [])
                if ends != [0, 1] {
                    refusals.append(RestoreRefusal(subject(descriptor), "the pipe's other end is outside the process; restoring it is not supported"))
                } else if let contents = (record.pipes ?? []).first(where: { $0.inode == descriptor.inode }) ?? tree?.pipeContents[descriptor.inode] {
                    // More bytes than the pipe holds would block the refill for ever.
                    if contents.bytes.count > contents.capacity || contents.capacity <= 0 {
                        refusals.append(RestoreRefusal(subject(descriptor), "\(contents.bytes.count) unread bytes recorded for a pipe of \(contents.capacity)"))
                    }
                } else {
                    refusals.append(RestoreRefusal(subject(descriptor), "the image does not hold the pipe's contents"))
                }
                continue
            }
            if descriptor.kind == .epoll {
                // The kernel keys a watch by (file, fd number): each must still name its file.
                for watch in descriptor.epoll ?? [] {
                    let target = all.first { $0.fd == watch.fd }
                    if target == nil || (watch.inode != nil && target?.inode != watch.inode) {
                        refusals.append(RestoreRefusal(subject(descriptor), "it watches fd \(watch.fd), which no longer refers to the file it registered"))
                    }
                }
                if descriptor.epoll == nil {
                    refusals.append(RestoreRefusal(subject(descriptor), "the kernel did not report its watches"))
                }
                continue
            }
            if descriptor.kind == .socket, let captured = record.connections?.first(where: { $0.inode == descriptor.inode }) {
                // An established TCP connection, captured in repair mode; an image is hostile input.
                let problems = captured.connection.problems()
                if !problems.isEmpty {
                    refusals.append(RestoreRefusal(subject(descriptor), problems.joined(separator: "; ")))
                }
                continue
            }
            if descriptor.kind == .socket {
                if let reason = socketProblem(descriptor, held: all, record: record, tree: tree, imagePid: pid) {
                    refusals.append(RestoreRefusal(subject(descriptor), reason))
                }
                continue
            }
            if let reason = descriptorProblem(descriptor, record: record) { refusals.append(RestoreRefusal(subject(descriptor), reason)) }
        }
        return refusals
    }

    /// What keeps an image from being prepared ahead (`Restorer.preparationRefusals`).
    static func preparationProblems(_ manifest: CheckpointManifest) -> [RestoreRefusal] {
        manifest.mappings.compactMap { mapping in
            let subject = "mapping 0x\(String(mapping.start, radix: 16))-0x\(String(mapping.end, radix: 16)) \(mapping.path ?? "")"
            if mapping.kind == MemoryMapping.Kind.file.rawValue && mapping.isShared && mapping.protection & Linux.PROT_WRITE != 0 {
                return RestoreRefusal(subject, "a shared writable file mapping: filling it ahead of the restore would write the file")
            }
            if mapping.kind == MemoryMapping.Kind.sysvSharedMemory.rawValue {
                return RestoreRefusal(subject, "SysV shared memory: preparing it would create or fill a segment others can see")
            }
            return nil
        }
    }

    /// Why a socket cannot be restored, or nil; each family's rules live with its restore.
    private static func socketProblem(_ descriptor: OpenDescriptor, held descriptors: [OpenDescriptor], record: RestoreRecord,
                                      tree: TreeHoldings?, imagePid: Int32) -> String? {
        guard let state = record.sockets?.first(where: { $0.inode == descriptor.inode }) else {
            return "the image does not hold the socket's state (taken before sockets were captured)"
        }
        if state.isInet { return inetSocketProblem(state) }
        if state.isPacket { return packetSocketProblem(state) }
        if state.isUnix {
            let held = Dictionary((record.sockets ?? []).filter { socket in descriptors.contains { $0.inode == socket.inode } }
                .map { ($0.inode, $0) }, uniquingKeysWith: { a, _ in a }).merging(tree?.sockets ?? [:], uniquingKeysWith: { a, _ in a })
            return unixSocketProblem(state, held: held) ?? queuedAncillaryProblem(state, numbers: Set(descriptors.map(\.fd)), imagePid: imagePid)
        }
        return "sockets of address family \(state.domain) are not restorable"
    }

    /// Timers the image cannot bring back here, and state it does not hold.
    private static func processStateProblems(_ manifest: CheckpointManifest, _ record: RestoreRecord) -> [RestoreRefusal] {
        guard let state = record.processState else {
            if record.posixTimers > 0 {
                return [RestoreRefusal("POSIX timers", "\(record.posixTimers) timer(s), but the image predates their capture; checkpoint the process again")]
            }
            return []
        }
        var refusals: [RestoreRefusal] = []
        if !state.posixTimers.isEmpty && !Kernel.canRestoreTimerIDs {
            refusals.append(RestoreRefusal("POSIX timers", "\(state.posixTimers.count) timer(s); this kernel cannot create a timer with a chosen id (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.13+)"))
        }
        let tids = Set(manifest.threads.map(\.tid))
        for timer in state.posixTimers where timer.notify & sigevThreadID != 0 && !tids.contains(timer.notifyTarget) {
            refusals.append(RestoreRefusal("POSIX timer \(timer.id)", "it notifies thread \(timer.notifyTarget), which the image does not hold"))
        }
        if Set(state.threads.map(\.tid)) != tids {
            refusals.append(RestoreRefusal("image", "thread states and process-state records name different threads"))
        }
        return refusals
    }

    /// Mappings the kernel provides (vDSO, vvar, vsyscall) are placed, not created.
    static func isKernelProvided(_ mapping: CheckpointMapping) -> Bool {
        ["vdso", "vvar", "vsyscall"].contains(mapping.kind) || mapping.path == "[vvar_vclock]"
    }

    private static func mappingProblem(_ mapping: CheckpointMapping, deleted: Bool) -> String? {
        if isKernelProvided(mapping) { return nil }
        switch MemoryMapping.Kind(rawValue: mapping.kind) {
        case .anonymous, .heap, .stack, .sharedAnonymous:
            return nil
        case .file:
            guard let path = mapping.path else { return "a file mapping without a path" }
            // Only the pages a process wrote are in the image; a memfd's or a deleted file's
            // other pages (and a memfd's size) are nowhere to map them from.
            if path.hasPrefix("/memfd:") {
                return "maps \(path.dropFirst()); memfd mappings are not restorable yet (memfd descriptors are)"
            }
            if deleted { return "maps a deleted file: the image holds only the pages the process wrote, not the file; not restorable yet" }
            if !fileExists(path) { return "\(path) does not exist here" }
            return nil
        case .sysvSharedMemory:
            return nil  // SharedMemorySegments.problem
        default:
            return "\(mapping.kind) mappings are not restorable"
        }
    }

    private static func descriptorProblem(_ descriptor: OpenDescriptor, record: RestoreRecord) -> String? {
        // A dup of a lower descriptor is restored as one: whatever that one needs, it needs.
        if let shared = record.sharedDescriptions?.first(where: { $0.fd == descriptor.fd }) {
            return shared.sameAs < descriptor.fd ? nil : "recorded as sharing fd \(shared.sameAs), which is not below it"
        }
        switch descriptor.kind {
        case .file where descriptor.deleted, .memfd:
            guard let contents = record.fileContents?.first(where: { $0.fd == descriptor.fd }) else {
                return "the image does not hold the content of this \(descriptor.kind == .memfd ? "memfd" : "deleted file") (taken before contents were kept)"
            }
            guard let bytes = contents.bytes else {
                return "\(contents.size) bytes, more than the \(FileContents.limit) a checkpoint keeps of a \(descriptor.kind == .memfd ? "memfd" : "deleted file")"
            }
            if UInt64(bytes.count) != contents.size { return "the image holds \(bytes.count) bytes of its \(contents.size)" }
            if descriptor.kind == .memfd, descriptor.flags & 3 != UInt32(Linux.O_RDWR) { return "a memfd opened again read-only or write-only is not restorable yet" }
            return nil
        case .file, .directory:
            guard let path = descriptor.path else { return "no path" }
            if !fileExists(path) { return "\(path) does not exist here" }
            return nil
        case .fifo:
            guard let path = descriptor.path else { return "no path" }
            guard let status = try? Kernel.status(path), status.type == .fifo else { return "no FIFO at \(path) here" }
            return nil
        case .timerfd:
            guard record.timerfds?.contains(where: { $0.fd == descriptor.fd }) == true else { return "the image does not hold the timer's state" }
            return nil
        case .signalfd:
            return descriptor.signalfd == nil ? "the kernel did not report its signal mask" : nil
        case .inotify:
            let found = Set((record.inotifyWatches ?? []).filter { $0.fd == descriptor.fd }.map(\.wd))
            for watch in descriptor.inotify ?? [] where !found.contains(watch.wd) {
                return "watch \(watch.wd) (inode \(watch.inode) on \(watch.device)): the checkpoint found no path for it"
            }
            for watch in (record.inotifyWatches ?? []) where watch.fd == descriptor.fd && !fileExists(watch.path) {
                return "watch \(watch.wd): \(watch.path) does not exist here"
            }
            return nil
        case .characterDevice:
            guard let path = descriptor.path, statelessDevices.contains(path) else {
                return "character device \(descriptor.path ?? descriptor.target) may hold state; only \(statelessDevices.sorted().joined(separator: ", ")) are restored"
            }
            return nil
        case .eventfd:
            guard let state = descriptor.eventfd, state.semaphore != nil else {
                return "the kernel did not report its counter and semaphore flag"
            }
            return nil
        default:
            return "\(descriptor.kind.rawValue) descriptors are not restorable yet"
        }
    }

    /// Nil when this kernel's vDSO is the image's (same length, same bytes) and laid out as one
    /// block after its data pages, as `arch_prctl(ARCH_MAP_VDSO_64)` places it.
    private static func vdsoProblem(_ vdso: RestoreRecord.VdsoIdentity) -> String? {
        guard let own = try? HostVdso.read() else { return "this process has no vDSO to compare with" }
        if own.vdso.length != vdso.vdso.length || own.vvar.length != vdso.vvar.length
            || own.vvarVclock?.length != vdso.vvarVclock?.length {
            return "its layout differs from this kernel's (another kernel build): trampolines are not supported"
        }
        if own.xxh64 != vdso.xxh64 { return "its code differs from this kernel's (xxh64 \(vdso.xxh64), here \(own.xxh64)): another kernel build" }
        let dataEnd = vdso.vvar.start + vdso.vvar.length + (vdso.vvarVclock?.length ?? 0)
        if let clock = vdso.vvarVclock, clock.start != vdso.vvar.start + vdso.vvar.length { return "vvar pages are not contiguous" }
        if dataEnd != vdso.vdso.start { return "the vDSO does not follow its data pages" }
        return nil
    }

    private static func fileExists(_ path: String) -> Bool { (try? Kernel.status(path)) != nil }
}

/// This process's own vDSO: the one a husk (a fork of this process) starts with.
enum HostVdso {
    static func read() throws -> RestoreRecord.VdsoIdentity {
        let maps = ProcMaps.parse(String(decoding: try Kernel.readFile("/proc/self/maps"), as: UTF8.self))
        func range(_ name: String) -> RestoreRecord.AddressRange? {
            maps.first { $0.path == name }.map { .init(start: $0.start, length: $0.length) }
        }
        guard let vvar = range("[vvar]"), let vdso = range("[vdso]") else { throw Errno.noSuchFileOrDirectory }
        let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(vdso.start)), count: Int(vdso.length))
        return RestoreRecord.VdsoIdentity(vvar: vvar, vvarVclock: range("[vvar_vclock]"), vdso: vdso,
                                          xxh64: Checksum.hex(Checksum.xxh64(bytes)))
    }
}
