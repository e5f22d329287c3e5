import CMitosis
import Foundation
import Glibc
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// The temporary pages a restore works with inside the husk: a gadget page holding a `syscall`
/// instruction (injected calls run there while the vDSO moves) and scratch pages for the
/// structures and paths system calls read. Placed where neither the husk nor the image has
/// anything; unmapped before the restored process runs.
struct WorkArea {
    static let scratchPages = 4
    let start: UInt64
    var gadget: UInt64 { start }
    var scratch: UInt64 { start + Self.page }
    var length: Int { Int(Self.page) * (1 + Self.scratchPages) }
    var end: UInt64 { start + UInt64(length) }
    static let page = UInt64(PagemapFile.pageSize)

    // Scratch layout, in bytes from `scratch`.
    static let sigactions: UInt64 = 0        // 64 × 32
    static let mmMap: UInt64 = 2048          // struct prctl_mm_map, 104
    static let cloneArgs: UInt64 = 2304      // struct clone_args, 80
    static let setTid: UInt64 = 2400         // pid_t[1]
    static let auxv: UInt64 = 2560           // up to 1024
    static let text: UInt64 = 4096           // a path, up to 3 pages
}

/// Phases of building the restored process inside a husk. All of it runs on the tracer's
/// thread (this is an extension of the `Tracer` actor), so ptrace requests and injected calls
/// need no hop between calls.
extension Tracer {
    /// Builds the image's process in the husk this tracer holds, runs `verify` with the process
    /// complete but not yet resumed, then lets it run and detaches. Returns phase timings.
    func buildRestoredProcess(_ plan: RestorePlan, chain: CheckpointChain,
                              verify: (@Sendable (Int32) throws -> Void)?) throws -> [String: Double] {
        var timings: [String: Double] = [:]
        let clock = ContinuousClock()
        var mark = clock.now
        func phase(_ name: String) {
            let now = clock.now
            let (seconds, attoseconds) = (now - mark).components
            timings[name] = Double(seconds) * 1000 + Double(attoseconds) / 1e15
            mark = now
        }
        let area = try prepareEmptyAddressSpace(plan)
        phase("empty")
        try mapMemory(plan, chain: chain, area: area)
        phase("memory")
        try restoreProcessState(plan, area: area)
        try restoreDescriptors(plan, area: area)
        try restoreLimits(plan)
        try createThreads(plan, area: area)
        try removeWorkArea(area, plan: plan)
        phase("state")
        if let verify {
            do { try verify(pid) } catch { throw StepFailure(step: "verifying before resuming", detail: "\(error)") }
        }
        try resumeThreads(plan)
        phase("resume")
        return timings
    }

    // MARK: Calls into the husk

    /// Runs one system call in the husk (thread `tid`, default the main thread), naming `step` if it fails.
    @discardableResult
    func huskCall(_ step: @autoclosure () -> String, _ number: Int, _ arguments: [UInt64], in tid: Int32? = nil) throws -> UInt64 {
        do {
            return try performSyscall(number, arguments, in: tid)
        } catch {
            throw StepFailure(step: step(), detail: "\(error)")
        }
    }

    /// Writes `bytes` into the husk's memory at `address`.
    func huskWrite(_ step: @autoclosure () -> String, _ address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        do {
            var done = 0
            while done < bytes.count {
                let count = try Kernel.writeMemory(pid: pid, address: address + UInt64(done), from: UnsafeRawBufferPointer(rebasing: bytes[done...]))
                guard count > 0 else { throw Errno.ioError }
                done += count
            }
        } catch {
            throw StepFailure(step: step(), detail: "process_vm_writev: \(error)")
        }
    }

    func huskWrite<T>(_ step: @autoclosure () -> String, _ address: UInt64, value: T) throws {
        var copy = value
        try withUnsafeBytes(of: &copy) { try huskWrite(step(), address, $0) }
    }

    /// Writes a NUL-terminated path into the scratch area and returns its address.
    func huskText(_ text: String, area: WorkArea) throws -> UInt64 {
        let bytes = Array(text.utf8) + [0]
        guard bytes.count <= Int(WorkArea.page) * (WorkArea.scratchPages - 1) else {
            throw StepFailure(step: "passing \(text)", detail: "path too long")
        }
        try bytes.withUnsafeBytes { try huskWrite("passing \(text)", area.scratch + WorkArea.text, $0) }
        return area.scratch + WorkArea.text
    }

    func huskMaps() throws -> [MemoryMapping] {
        do {
            return ProcMaps.parse(String(decoding: try Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self))
        } catch {
            throw StepFailure(step: "reading the husk's maps", detail: "\(error)")
        }
    }

    // MARK: Phase 1: an empty address space with the image's vDSO

    /// Places the work area, leaves the husk's inherited rseq, unmaps everything the husk
    /// inherited from Mitosis, and maps the vDSO where the image had it.
    private func prepareEmptyAddressSpace(_ plan: RestorePlan) throws -> WorkArea {
        let own = try huskMaps()
        let area = try Self.freeArea(avoiding: own.map { ($0.start, $0.end) } + plan.manifest.mappings.map { ($0.start, $0.end) })
        try huskCall("mapping the work area", SyscallNumber.mmap,
                     [area.start, UInt64(area.length), UInt64(PROT_READ | PROT_WRITE), UInt64(MAP_PRIVATE | MAP_ANONYMOUS | 0x100000 /* MAP_FIXED_NOREPLACE */),
                      UInt64.max, 0])
        let gadget: [UInt8] = [0x0f, 0x05, 0xcc]  // syscall; int3
        try gadget.withUnsafeBytes { try huskWrite("writing the gadget", area.gadget, $0) }
        try huskCall("protecting the gadget", MITOSIS_SYS_mprotect, [area.gadget, WorkArea.page, UInt64(PROT_READ | PROT_EXEC)])
        useSyscallInstruction(area.gadget)

        // The husk inherited glibc's rseq registration: the kernel would write into unmapped memory.
        if let rseq = try? Ptrace.rseqConfiguration(pid), rseq.rseq_abi_pointer != 0 {
            try huskCall("unregistering the husk's rseq", MITOSIS_SYS_rseq,
                         [rseq.rseq_abi_pointer, UInt64(rseq.rseq_abi_size), 1 /* RSEQ_FLAG_UNREGISTER */, UInt64(rseq.signature)])
        }
        for mapping in own where mapping.kind != .vsyscall && !(mapping.start >= area.start && mapping.end <= area.end) {
            try huskCall("unmapping the husk's \(mapping.path ?? "anonymous memory") at 0x\(String(mapping.start, radix: 16))",
                         SyscallNumber.munmap, [mapping.start, mapping.length])
        }
        let vdso = plan.record.vdso
        try huskCall("mapping the vDSO at 0x\(String(vdso.vvar.start, radix: 16))",
                     MITOSIS_SYS_arch_prctl, [0x2003 /* ARCH_MAP_VDSO_64 */, vdso.vvar.start])
        let placed = try huskMaps()
        guard placed.contains(where: { $0.path == "[vdso]" && $0.start == vdso.vdso.start && $0.length == vdso.vdso.length }),
              placed.contains(where: { $0.path == "[vvar]" && $0.start == vdso.vvar.start })
        else {
            throw StepFailure(step: "mapping the vDSO", detail: "the kernel placed it elsewhere than the image's 0x\(String(vdso.vdso.start, radix: 16))")
        }
        return area
    }

    /// A range for the work area that overlaps none of `taken`, below the 47-bit user limit.
    static func freeArea(avoiding taken: [(UInt64, UInt64)]) throws -> WorkArea {
        let length = WorkArea.page * UInt64(1 + WorkArea.scratchPages)
        var candidate: UInt64 = 0x1_0000_0000
        while candidate < 0x7f00_0000_0000 {
            let end = candidate + length
            if !taken.contains(where: { $0.0 < end && candidate < $0.1 }) { return WorkArea(start: candidate) }
            candidate += 0x1000_0000
        }
        throw StepFailure(step: "placing the work area", detail: "no free range")
    }

    // MARK: Phase 2: memory

    /// Maps every mapping of the image at its address with its protections, flags and file,
    /// then writes the pages the image holds (clean file pages come from the file, untouched
    /// pages stay zero).
    private func mapMemory(_ plan: RestorePlan, chain: CheckpointChain, area: WorkArea) throws {
        let vmFlags = Dictionary(plan.record.mappingFlags.map { ($0.start, Set($0.vmFlags)) }, uniquingKeysWith: { a, _ in a })
        var cache: RunCache?
        for mapping in plan.manifest.mappings where !RestorePlan.isKernelProvided(mapping) {
            let name = "0x\(String(mapping.start, radix: 16)) \(mapping.path ?? "[anonymous]")"
            let perms = Array(mapping.perms.utf8)
            let protection = (perms[0] == UInt8(ascii: "r") ? PROT_READ : 0) | (perms[1] == UInt8(ascii: "w") ? PROT_WRITE : 0)
                | (perms[2] == UInt8(ascii: "x") ? PROT_EXEC : 0)
            let shared = perms[3] == UInt8(ascii: "s")
            let held = mapping.pages.filter { $0.state == .stored || $0.state == .inherited }
            let mapProtection = held.isEmpty ? protection : protection | PROT_WRITE
            let flags = vmFlags[mapping.start] ?? []
            var mapFlags = (shared ? MAP_SHARED : MAP_PRIVATE) | 0x100000 /* MAP_FIXED_NOREPLACE */
            if flags.contains("gd") || mapping.kind == MemoryMapping.Kind.stack.rawValue { mapFlags |= MAP_GROWSDOWN }
            let length = mapping.end - mapping.start
            var address: UInt64
            if mapping.kind == MemoryMapping.Kind.file.rawValue, let path = mapping.path {
                let open = (shared && protection & PROT_WRITE != 0 ? O_RDWR : O_RDONLY) | O_CLOEXEC
                let fd = try huskCall("opening \(path)", MITOSIS_SYS_openat, [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(open), 0])
                let mapped = Result { try huskCall("mapping \(name)", SyscallNumber.mmap, [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags), fd, mapping.offset]) }
                try huskCall("closing \(path)", SyscallNumber.close, [fd])
                address = try mapped.get()
            } else {
                address = try huskCall("mapping \(name)", SyscallNumber.mmap,
                                       [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags | MAP_ANONYMOUS), UInt64.max, 0])
            }
            guard address == mapping.start else {
                throw StepFailure(step: "mapping \(name)", detail: "the kernel placed it at 0x\(String(address, radix: 16))")
            }
            for range in held { try fill(range, chain: chain, name: name, cache: &cache) }
            if mapProtection != protection {
                try huskCall("protecting \(name)", MITOSIS_SYS_mprotect, [mapping.start, length, UInt64(protection)])
            }
            // madvise advice kept in VmFlags: don't fork, wipe on fork, don't dump, huge pages or not.
            for (flag, advice) in [("dc", 10), ("wf", 18), ("dd", 16), ("hg", 14), ("nh", 15)] where flags.contains(flag) {
                try huskCall("advising \(name) (\(flag))", MITOSIS_SYS_madvise, [mapping.start, length, UInt64(advice)])
            }
            if let path = mapping.path, path.hasPrefix("[anon:"), path.hasSuffix("]") {
                let label = String(path.dropFirst(6).dropLast())
                try huskCall("naming \(name)", MITOSIS_SYS_prctl,
                             [0x5356_4d41 /* PR_SET_VMA */, 0 /* PR_SET_VMA_ANON_NAME */, mapping.start, length, try huskText(label, area: area)])
            }
        }
    }

    /// The last page run read from the image, checked against its checksum.
    struct RunCache {
        var image: Int
        var run: PageRun
        var bytes: [UInt8]
    }

    /// Writes the pages of `range` from the chain: each comes from the newest image whose index
    /// holds it (as `CheckpointChain.read` decides), one checked run at a time, written straight
    /// from the run's bytes.
    private func fill(_ range: PageRange, chain: CheckpointChain, name: String, cache: inout RunCache?) throws {
        var at = range.start
        while at < range.end {
            guard let (number, run) = chain.images.enumerated().lazy
                .compactMap({ image in image.element.run(containing: at).map { (image.offset, $0) } }).first
            else {
                throw StepFailure(step: "reading the image's pages at 0x\(String(at, radix: 16))", detail: "recorded as \(range.state.rawValue) but no image in the chain holds it")
            }
            if cache?.image != number || cache?.run != run {
                do {
                    cache = RunCache(image: number, run: run, bytes: try chain.images[number].bytes(of: run))
                } catch {
                    throw StepFailure(step: "reading the image's pages at 0x\(String(at, radix: 16))", detail: "\(error)")
                }
            }
            let end = min(run.end, range.end)
            let from = Int(at - run.address), to = Int(end - run.address)
            try cache!.bytes.withUnsafeBytes { try huskWrite("writing pages of \(name)", at, UnsafeRawBufferPointer(rebasing: $0[from..<to])) }
            at = end
        }
    }

    // MARK: Phase 3: process-wide state

    /// Working directory, umask, every signal disposition, and the mm bounds, auxv and
    /// executable (`PR_SET_MM_MAP`, which also makes the kernel name `[heap]` and `[stack]`).
    private func restoreProcessState(_ plan: RestorePlan, area: WorkArea) throws {
        let record = plan.record
        if let identity = plan.manifest.process?.identity {
            if let cwd = identity.cwd {
                try huskCall("changing directory to \(cwd)", MITOSIS_SYS_chdir, [try huskText(cwd, area: area)])
            }
            if let text = identity.umask, let mask = UInt64(text, radix: 8) {
                try huskCall("setting the umask", MITOSIS_SYS_umask, [mask])
            }
        }
        let actions = record.signalActions.flatMap { [$0.handler, $0.flags, $0.restorer, $0.mask] }
        try actions.withUnsafeBytes { try huskWrite("passing signal actions", area.scratch + WorkArea.sigactions, $0) }
        for signal in 1...min(64, record.signalActions.count) where signal != SIGKILL && signal != SIGSTOP {
            try huskCall("setting the action of signal \(signal)", MITOSIS_SYS_rt_sigaction,
                         [UInt64(signal), area.scratch + WorkArea.sigactions + UInt64(signal - 1) * 32, 0, 8])
        }

        let exe = try huskCall("opening the executable \(record.executable)", MITOSIS_SYS_openat,
                               [UInt64(bitPattern: -100), try huskText(record.executable, area: area), UInt64(O_RDONLY | O_CLOEXEC), 0])
        try record.auxv.withUnsafeBytes { try huskWrite("passing the auxiliary vector", area.scratch + WorkArea.auxv, $0) }
        let b = record.bounds
        let map = mitosis_prctl_mm_map(
            start_code: b.startCode, end_code: b.endCode, start_data: b.startData, end_data: b.endData,
            start_brk: b.startBrk, brk: b.brk, start_stack: b.startStack, arg_start: b.argStart, arg_end: b.argEnd,
            env_start: b.envStart, env_end: b.envEnd, auxv: area.scratch + WorkArea.auxv,
            auxv_size: UInt32(record.auxv.count * 8), exe_fd: UInt32(exe))
        try huskWrite("passing the mm bounds", area.scratch + WorkArea.mmMap, value: map)
        let set = Result {
            try huskCall("setting the mm bounds, auxv and executable (PR_SET_MM_MAP)", MITOSIS_SYS_prctl,
                         [35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */, area.scratch + WorkArea.mmMap, UInt64(MemoryLayout<mitosis_prctl_mm_map>.size), 0])
        }
        try huskCall("closing the executable", SyscallNumber.close, [exe])
        _ = try set.get()
    }

    /// `/proc/PID/limits` names, in `RLIMIT_*` order.
    static let limitNames = ["Max cpu time", "Max file size", "Max data size", "Max stack size", "Max core file size",
                             "Max resident set", "Max processes", "Max open files", "Max locked memory", "Max address space",
                             "Max file locks", "Max pending signals", "Max msgqueue size", "Max nice priority",
                             "Max realtime priority", "Max realtime timeout"]

    /// Resource limits, set from outside (`prlimit64`), after the descriptors: a lower
    /// open-files limit must not stop their restore.
    private func restoreLimits(_ plan: RestorePlan) throws {
        for limit in plan.manifest.process?.limits ?? [] {
            guard let resource = Self.limitNames.firstIndex(of: limit.name) else { continue }
            do {
                try Kernel.setResourceLimit(pid: pid, resource: Int32(resource), soft: limit.soft, hard: limit.hard)
            } catch {
                throw StepFailure(step: "setting the limit '\(limit.name)'", detail: "\(error)")
            }
        }
    }

    // MARK: Phase 4: descriptors

    /// Creates every descriptor again at its number, in ascending order: a new descriptor
    /// takes the lowest free number, never above the one wanted, and is then moved there.
    private func restoreDescriptors(_ plan: RestorePlan, area: WorkArea) throws {
        let descriptors = (plan.manifest.descriptors ?? []).sorted(by: { $0.fd < $1.fd })
        // Pipes first, both ends parked above every number wanted, so that no temporary
        // descriptor sits on a number another descriptor needs.
        let parked = try createPipes(descriptors, contents: plan.record.pipes ?? [], above: UInt64(descriptors.last?.fd ?? 0), area: area)
        for descriptor in descriptors {
            let fd: UInt64
            switch descriptor.kind {
            case .pipe:
                let end = parked[PipeEnd(inode: descriptor.inode, write: descriptor.flags & 3 == 1)]!
                try huskCall("placing the pipe end fd \(descriptor.fd)", MITOSIS_SYS_dup3,
                             [end, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(O_CLOEXEC))])
                continue
            case .eventfd:
                fd = try createEventfd(descriptor, area: area)
            case .epoll:
                fd = try huskCall("creating the epoll of fd \(descriptor.fd)", MITOSIS_SYS_epoll_create1,
                                  [UInt64(descriptor.flags & UInt32(O_CLOEXEC))])
            default:
                fd = try openFile(descriptor, area: area)
            }
            if fd != UInt64(descriptor.fd) {
                try huskCall("moving fd \(fd) to \(descriptor.fd)", MITOSIS_SYS_dup3,
                             [fd, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(O_CLOEXEC))])
                try huskCall("closing fd \(fd)", SyscallNumber.close, [fd])
            }
        }
        for end in parked.values { try huskCall("closing the parked pipe end \(end)", SyscallNumber.close, [end]) }
        // Watches last, once every watched descriptor exists, and by injection: the kernel keys
        // a watch by the caller's fd number, so they must be added from the process's own table.
        for descriptor in descriptors where descriptor.kind == .epoll {
            for watch in descriptor.epoll ?? [] {
                var event = [UInt8](repeating: 0, count: 12)  // struct epoll_event is packed on x86-64
                withUnsafeBytes(of: watch.events.littleEndian) { event.replaceSubrange(0..<4, with: $0) }
                withUnsafeBytes(of: watch.data.littleEndian) { event.replaceSubrange(4..<12, with: $0) }
                try event.withUnsafeBytes { try huskWrite("passing an epoll event", area.scratch + WorkArea.text, $0) }
                try huskCall("adding fd \(watch.fd) to the epoll of fd \(descriptor.fd)", MITOSIS_SYS_epoll_ctl,
                             [UInt64(descriptor.fd), 1 /* EPOLL_CTL_ADD */, UInt64(watch.fd), area.scratch + WorkArea.text])
            }
        }
    }

    struct PipeEnd: Hashable {
        var inode: UInt64
        var write: Bool
    }

    /// Creates each pipe the process holds (`pipe2`), parks both ends at numbers above `highest`,
    /// gives it its capacity and each end its `O_NONBLOCK`, and writes its unread bytes through
    /// a copy of the write end taken with `pidfd_getfd` (the same open file).
    private func createPipes(_ descriptors: [OpenDescriptor], contents: [RestoreRecord.PipeContents],
                             above highest: UInt64, area: WorkArea) throws -> [PipeEnd: UInt64] {
        var parked: [PipeEnd: UInt64] = [:]
        var next = highest + 1
        for pipe in contents {
            let ends = descriptors.filter { $0.kind == .pipe && $0.inode == pipe.inode }
            guard let reader = ends.first(where: { $0.flags & 3 == 0 }), let writer = ends.first(where: { $0.flags & 3 == 1 }) else { continue }
            let step = "creating the pipe of fds \(ends.map(\.fd))"
            try huskCall(step, MITOSIS_SYS_pipe2, [area.scratch + WorkArea.text, 0])
            var pair: (Int32, Int32) = (0, 0)
            let count = (try? withUnsafeMutableBytes(of: &pair) { buffer throws(Errno) in
                try Kernel.readMemory(pid: pid, address: area.scratch + WorkArea.text, into: buffer)
            }) ?? 0
            guard count == 8 else { throw StepFailure(step: step, detail: "cannot read the new descriptors") }
            for (fd, end, isWrite) in [(pair.0, reader, false), (pair.1, writer, true)] {
                let slot = next
                next += 1
                try huskCall(step, MITOSIS_SYS_dup3, [UInt64(fd), slot, 0])
                try huskCall(step, SyscallNumber.close, [UInt64(fd)])
                if end.flags & UInt32(O_NONBLOCK) != 0 {
                    try huskCall("making fd \(end.fd) non-blocking", SyscallNumber.fcntl, [slot, UInt64(F_SETFL), UInt64(O_NONBLOCK)])
                }
                parked[PipeEnd(inode: pipe.inode, write: isWrite)] = slot
            }
            let writeEnd = parked[PipeEnd(inode: pipe.inode, write: true)]!
            try huskCall("setting the capacity of the pipe of fd \(reader.fd)", SyscallNumber.fcntl,
                         [writeEnd, 1031 /* F_SETPIPE_SZ */, UInt64(pipe.capacity)])
            if !pipe.bytes.isEmpty {
                do {
                    let pidfd = try Kernel.pidfdOpen(pid)
                    defer { try? pidfd.close() }
                    let local = try Kernel.pidfdGetfd(pidfd, Int32(writeEnd))
                    defer { try? local.close() }
                    try pipe.bytes.withUnsafeBytes { buffer in try Kernel.writeAll(local, buffer) }
                } catch {
                    throw StepFailure(step: "refilling the pipe of fd \(reader.fd)", detail: "\(error)")
                }
            }
        }
        return parked
    }


    /// A file, directory or stateless device: opened by path with its flags, at its offset.
    private func openFile(_ descriptor: OpenDescriptor, area: WorkArea) throws -> UInt64 {
        guard let path = descriptor.path else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no path") }
        let flags = descriptor.flags & ~UInt32(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY)
        let fd = try huskCall("opening \(path) as fd \(descriptor.fd)", MITOSIS_SYS_openat,
                              [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(flags), 0])
        if descriptor.position > 0, descriptor.kind != .characterDevice {
            try huskCall("seeking fd \(descriptor.fd) to \(descriptor.position)", MITOSIS_SYS_lseek, [fd, descriptor.position, UInt64(SEEK_SET)])
        }
        return fd
    }

    /// An eventfd with its flags and counter. `eventfd2` takes only 32 bits of initial value,
    /// so the counter is added by a write of the full 64-bit value.
    private func createEventfd(_ descriptor: OpenDescriptor, area: WorkArea) throws -> UInt64 {
        guard let state = descriptor.eventfd else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no eventfd state") }
        let flags = (descriptor.flags & UInt32(O_CLOEXEC | O_NONBLOCK)) | (state.semaphore == true ? 1 /* EFD_SEMAPHORE */ : 0)
        let fd = try huskCall("creating the eventfd of fd \(descriptor.fd)", MITOSIS_SYS_eventfd2, [0, UInt64(flags)])
        if state.counter > 0 {
            try huskWrite("passing the eventfd counter", area.scratch + WorkArea.text, value: state.counter)
            try huskCall("setting the counter of fd \(descriptor.fd)", SyscallNumber.write, [fd, area.scratch + WorkArea.text, 8])
        }
        return fd
    }

    // MARK: Phase 5: threads

    /// Creates every other thread with its tid (`clone3` with `set_tid`, injected in the main
    /// thread) and gives each thread its clear_child_tid, robust list and name.
    private func createThreads(_ plan: RestorePlan, area: WorkArea) throws {
        let flags: UInt64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  // VM FS FILES SIGHAND THREAD SYSVSEM
        for state in plan.manifest.threads where state.tid != pid {
            try huskWrite("passing the tid \(state.tid)", area.scratch + WorkArea.setTid, value: state.tid)
            let args = mitosis_clone_args(flags: flags, pidfd: 0, child_tid: 0, parent_tid: 0, exit_signal: 0, stack: 0,
                                          stack_size: 0, tls: 0, set_tid: area.scratch + WorkArea.setTid, set_tid_size: 1)
            try huskWrite("passing clone arguments", area.scratch + WorkArea.cloneArgs, value: args)
            let tid = try huskCall("creating thread \(state.tid)", MITOSIS_SYS_clone3,
                                   [area.scratch + WorkArea.cloneArgs, UInt64(MemoryLayout<mitosis_clone_args>.size)], in: pid)
            guard tid == UInt64(state.tid) else { throw StepFailure(step: "creating thread \(state.tid)", detail: "got tid \(tid)") }
            do { try adoptClonedThread(state.tid) } catch { throw StepFailure(step: "holding thread \(state.tid)", detail: "\(error)") }
        }
        for record in plan.record.threads {
            try huskCall("setting clear_child_tid of thread \(record.tid)", MITOSIS_SYS_set_tid_address, [record.clearChildTid], in: record.tid)
            if record.robustList != 0 {
                try huskCall("setting the robust list of thread \(record.tid)", MITOSIS_SYS_set_robust_list,
                             [record.robustList, record.robustListLength], in: record.tid)
            }
        }
        // Only a thread itself may rename itself (comm is not writable by another process).
        for state in plan.manifest.threads {
            try huskCall("naming thread \(state.tid)", MITOSIS_SYS_prctl, [15 /* PR_SET_NAME */, try huskText(state.name, area: area)], in: state.tid)
        }
    }

    /// Unmaps the gadget and scratch pages, running the call from a `syscall` instruction in
    /// the restored vDSO. Also clears the husk's parent-death signal.
    private func removeWorkArea(_ area: WorkArea, plan: RestorePlan) throws {
        try huskCall("clearing the parent-death signal", MITOSIS_SYS_prctl, [1 /* PR_SET_PDEATHSIG */, 0])
        let vdso = plan.record.vdso.vdso
        var bytes = [UInt8](repeating: 0, count: Int(vdso.length))
        let count = (try? bytes.withUnsafeMutableBytes { buffer throws(Errno) in try Kernel.readMemory(pid: pid, address: vdso.start, into: buffer) }) ?? 0
        guard count >= 2, let index = (0..<count - 1).first(where: { bytes[$0] == 0x0f && bytes[$0 + 1] == 0x05 }) else {
            throw StepFailure(step: "finding a syscall instruction in the restored vDSO", detail: "none found")
        }
        useSyscallInstruction(vdso.start + UInt64(index))
        try huskCall("unmapping the work area", SyscallNumber.munmap, [area.start, UInt64(area.length)])
    }

    // MARK: Phase 6: run

    /// Registers each thread's rseq area again, puts back registers (with interrupted system
    /// calls set to restart), extended state and signal mask, and detaches.
    private func resumeThreads(_ plan: RestorePlan) throws {
        for state in plan.manifest.threads {
            if let rseq = state.rseq {
                try huskCall("registering rseq of thread \(state.tid)", MITOSIS_SYS_rseq,
                             [rseq.address, UInt64(rseq.size), 0, UInt64(rseq.signature)], in: state.tid)
            }
        }
        for state in plan.manifest.threads {
            do {
                try Ptrace.setRegisters(state.tid, user_regs_struct(state.registers.resumingInterruptedCall))
                try state.extendedState.bytes.withUnsafeBytes { buffer in
                    try Ptrace.setRegisterSet(state.tid, kind: MITOSIS_NT_X86_XSTATE, from: buffer)
                }
                try Ptrace.setSignalMask(state.tid, state.signalMask)
            } catch {
                throw StepFailure(step: "setting the registers of thread \(state.tid)", detail: "\(error)")
            }
        }
        // Signals pending at the freeze are sent again (once each: their siginfo and the count
        // of queued real-time signals are not recorded). They wait, blocked or not, for the thaw.
        let shared = plan.manifest.threads.first?.sharedPendingSignals ?? 0
        for state in plan.manifest.threads {
            for signal in Self.signals(in: state.pendingSignals) {
                do { try Kernel.threadKill(pid: pid, tid: state.tid, signal: signal) } catch {
                    throw StepFailure(step: "sending signal \(signal) pending for thread \(state.tid)", detail: "\(error)")
                }
            }
        }
        for signal in Self.signals(in: shared) {
            do { try Kernel.sendSignal(pid: pid, signal) } catch {
                throw StepFailure(step: "sending signal \(signal) pending for the process", detail: "\(error)")
            }
        }
        thaw()
    }
}

extension Tracer {
    /// The signal numbers of a pending-set bitmap (bit `n - 1` is signal `n`).
    static func signals(in set: UInt64) -> [Int32] {
        (1...64).filter { set & (1 << UInt64($0 - 1)) != 0 }.map { Int32($0) }
    }
}

extension user_regs_struct {
    init(_ r: GeneralRegisters) {
        self.init(r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx, r11: r.r11, r10: r.r10,
                  r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi, rdi: r.rdi, orig_rax: r.origRax,
                  rip: r.rip, cs: r.cs, eflags: r.eflags, rsp: r.rsp, ss: r.ss, fs_base: r.fsBase, gs_base: r.gsBase,
                  ds: r.ds, es: r.es, fs: r.fs, gs: r.gs)
    }
}
