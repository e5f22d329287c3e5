import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Reads what a restore needs that memory, thread states and descriptors do not hold
/// (`RestoreRecord`), while the process is frozen.
///
/// Most of it comes from /proc and ptrace. The handlers of caught signals, each thread's
/// clear_child_tid and the current break are known only to the process itself: they are asked by
/// injected system calls (`rt_sigaction(sig, NULL, scratch)`, `prctl(PR_GET_TID_ADDRESS, scratch)`, `brk(0)`)
/// writing into a scratch page mapped for the purpose and unmapped before the thaw.
enum RestoreCapture {
    static func capture(_ tracer: Tracer, target: TargetProcess, maps: [MemoryMapping], descriptors: [OpenDescriptor]) async throws -> RestoreRecord {
        let pid = target.pid
        // Before any injection: injecting places a stub in the vDSO's padding until the thaw.
        let vdso = try vdsoIdentity(pid: pid, maps: maps)
        let brk = try await tracer.performSyscall(SyscallNumber.brk, [0])
        guard let bounds = RestoreRecord.MemoryBounds(procStat: try target.text("stat"), brk: brk) else {
            throw MitosisError.system(operation: "parsing /proc/\(pid)/stat", errno: .invalidArgument)
        }
        let auxvBytes = try target.bytes("auxv")
        let auxv = stride(from: 0, to: auxvBytes.count - 7, by: 8).map { offset in
            auxvBytes[offset..<offset + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        let executable = try target.readLink("exe")
        let tids = await tracer.threads(of: pid)

        // Signal dispositions (32 bytes each) and clear_child_tid words (8 each) in one page.
        let page = Int(PagemapFile.pageSize)
        let scratch = try await tracer.injectMmap(length: page)
        let asked: Result<([RestoreRecord.SignalAction], [UInt64], RestoreRecord.Clocks), any Error>
        do {
            let (actions, clearChildTids) = try await askTarget(tracer, target: target, tids: tids, scratch: scratch)
            asked = .success((actions, clearChildTids, try await askClocks(tracer, pid: pid, scratch: scratch)))
        } catch {
            asked = .failure(error)
        }
        try await tracer.injectMunmap(address: scratch, length: page)
        let (actions, clearChildTids, clocks) = try asked.get()

        var threads: [RestoreRecord.ThreadRestoreState] = []
        for (index, tid) in tids.enumerated() {
            let robust = try Kernel.robustList(tid)
            threads.append(RestoreRecord.ThreadRestoreState(tid: tid, clearChildTid: clearChildTids[index],
                                                            robustList: robust.head, robustListLength: robust.length))
        }
        let timers = (try? target.bytes("timers")).map { bytes in
            String(decoding: bytes, as: UTF8.self).split(separator: "\n").filter { $0.hasPrefix("ID:") }.count
        } ?? 0
        var pipes: [RestoreRecord.PipeContents] = []
        // A FIFO's bytes are read through a reader opened on it, only when the process holds
        // a read end itself: a reader coming and going where there was none would be seen by
        // writers outside (an open for writing waiting for one would return).
        let fifoReaders = descriptors.filter { $0.kind == .fifo && $0.flags & 3 != 1 }
        for descriptor in descriptors where (descriptor.kind == .pipe || fifoReaders.contains(descriptor))
            && !pipes.contains(where: { $0.inode == descriptor.inode }) {
            let (bytes, capacity) = try Kernel.peekPipe(pid: pid, fd: descriptor.fd)
            pipes.append(RestoreRecord.PipeContents(inode: descriptor.inode, capacity: capacity, bytes: Data(bytes)))
        }
        var record = RestoreRecord(bounds: bounds, auxv: auxv, executable: executable, vdso: vdso, signalActions: actions,
                             threads: threads, mappingFlags: [],
                             posixTimers: timers)
        record.pipes = pipes
        record.clocks = clocks
        var received: [SocketCapture.Received] = []
        defer { for item in received { for right in item.rights { try? right.close() } } }
        record.sockets = try SocketCapture.capture(pid: pid, descriptors: descriptors, received: &received)
        record.sharedDescriptions = try SharedDescriptionCapture.capture(pid: pid, descriptors: descriptors)
        record.fileContents = try FileContentCapture.capture(pid: pid, descriptors: descriptors, shared: record.sharedDescriptions ?? [])
        record.timerfds = try FileContentCapture.timerfds(pid: pid, descriptors: descriptors)
        record.inotifyWatches = try InotifyCapture.capture(pid: pid, descriptors: descriptors)
        let inFlight = received
        received = []
        try InFlightCapture.capture(pid: pid, descriptors: descriptors, received: inFlight, record: &record)
        var seccomp: [SeccompState?] = []
        for tid in tids { seccomp.append(try await tracer.seccomp(of: tid, pid: pid)) }
        record.seccomp = seccomp.first ?? nil
        record.seccompDiffers = zip(tids, seccomp).first { $0.1 != record.seccomp }?.0
        let attached = Set(maps.filter { $0.kind == .sysvSharedMemory }.map { Int32(truncatingIfNeeded: $0.inode) })
        if !attached.isEmpty {
            record.sysvSharedMemory = try Kernel.sharedMemorySegments().filter { attached.contains($0.shmid) }
        }
        record.processState = try await ProcessStateCapture.capture(tracer, target: target, tids: tids)
        return record
    }

    /// Runs the asking calls into `scratch` and reads their answers.
    private static func askTarget(_ tracer: Tracer, target: TargetProcess, tids: [Int32],
                                  scratch: UInt64) async throws -> ([RestoreRecord.SignalAction], [UInt64]) {
        let pid = target.pid
        // Only handled signals (and Linux.SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT matter even at
        // SIG_DFL) need asking; /proc tells the default and ignored ones apart.
        let status = ProcStatus(parsing: try target.text("status"))
        let caught = status["SigCgt"].flatMap { UInt64($0, radix: 16) } ?? UInt64.max
        let ignored = status["SigIgn"].flatMap { UInt64($0, radix: 16) } ?? 0
        for signal in 1...64 where caught & (1 << UInt64(signal - 1)) != 0 || signal == Linux.SIGCHLD {
            _ = try await tracer.performSyscall(SyscallNumber.rt_sigaction, [UInt64(signal), 0, scratch + UInt64(signal - 1) * 32, 8])
        }
        for (index, tid) in tids.enumerated() {
            _ = try await tracer.performSyscall(SyscallNumber.prctl, [40 /* PR_GET_TID_ADDRESS */, scratch + 2048 + UInt64(index) * 8], in: tid)
        }
        var words = [UInt64](repeating: 0, count: 256 + tids.count)
        let wanted = words.count * 8
        let count = try words.withUnsafeMutableBytes { buffer throws(Errno) in
            try Kernel.readMemory(pid: pid, address: scratch, into: buffer)
        }
        guard count == wanted else { throw MitosisError.system(operation: "reading the scratch page of \(pid)", errno: .ioError) }
        let actions = (0..<64).map { index in
            let asked = caught & (1 << UInt64(index)) != 0 || index + 1 == Linux.SIGCHLD
            return asked ? RestoreRecord.SignalAction(handler: words[index * 4], flags: words[index * 4 + 1],
                                                      restorer: words[index * 4 + 2], mask: words[index * 4 + 3])
                : RestoreRecord.SignalAction(handler: ignored & (1 << UInt64(index)) != 0 ? 1 : 0, flags: 0, restorer: 0, mask: 0)
        }
        return (actions, Array(words[256...]))
    }

    /// The process's `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` as it reads them (injected
    /// `clock_gettime`: inside its time namespace, whatever Mitosis's is), and the real time.
    private static func askClocks(_ tracer: Tracer, pid: Int32, scratch: UInt64) async throws -> RestoreRecord.Clocks {
        _ = try await tracer.performSyscall(SyscallNumber.clock_gettime, [UInt64(ClockID.monotonic), scratch])
        _ = try await tracer.performSyscall(SyscallNumber.clock_gettime, [UInt64(ClockID.boottime), scratch + 16])
        let realtime = try Kernel.clockNow(ClockID.realtime)
        var words = [Int64](repeating: 0, count: 4)
        let count = try words.withUnsafeMutableBytes { buffer throws(Errno) in
            try Kernel.readMemory(pid: pid, address: scratch, into: buffer)
        }
        guard count == 32 else { throw MitosisError.system(operation: "reading the clocks of \(pid)", errno: .ioError) }
        return RestoreRecord.Clocks(monotonic: TimeSpec(seconds: words[0], nanoseconds: words[1]),
                                    boottime: TimeSpec(seconds: words[2], nanoseconds: words[3]), realtime: realtime)
    }

    /// The vDSO's and its data pages' places, and a hash of the vDSO's code.
    static func vdsoIdentity(pid: Int32, maps: [MemoryMapping]) throws -> RestoreRecord.VdsoIdentity {
        func range(_ name: String) -> RestoreRecord.AddressRange? {
            maps.first { $0.path == name }.map { .init(start: $0.start, length: $0.length) }
        }
        guard let vvar = range("[vvar]"), let vdso = range("[vdso]") else {
            throw MitosisError.unsupported(feature: "restore", detail: "process \(pid) has no [vdso] or [vvar] mapping")
        }
        var bytes = [UInt8](repeating: 0, count: Int(vdso.length))
        let count = try bytes.withUnsafeMutableBytes { buffer throws(Errno) in
            try Kernel.readMemory(pid: pid, address: vdso.start, into: buffer)
        }
        guard count == bytes.count else { throw MitosisError.system(operation: "reading the vDSO of \(pid)", errno: .ioError) }
        return RestoreRecord.VdsoIdentity(vvar: vvar, vvarVclock: range("[vvar_vclock]"), vdso: vdso,
                                          xxh64: Checksum.hex(Checksum.xxh64(bytes)))
    }
}
