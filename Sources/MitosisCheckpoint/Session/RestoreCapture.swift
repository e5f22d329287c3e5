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
/// clear_child_tid, the current break, the clocks as the process reads them and what
/// `ProcessStateCapture` asks are known only to the process itself: they are asked by injected
/// system calls (`rt_sigaction(sig, NULL, scratch)`, `prctl(PR_GET_TID_ADDRESS, scratch)`,
/// `brk(0)`, …) writing into one scratch mapping made for the purpose and unmapped before the
/// thaw; one injected program per thread runs them (one stop per thread, not two per call), the
/// threads' programs side by side.
enum RestoreCapture {
    /// The record, and how long the injected calls took (the scratch mapping made, the programs
    /// run, the answers read, the mapping removed): the part of the freeze that is ptrace stops.
    static func capture(_ tracer: Tracer, target: TargetProcess, maps: [MemoryMapping],
                        descriptors: [OpenDescriptor]) async throws -> (record: RestoreRecord, injected: Duration) {
        let pid = target.pid
        // Before any injection: injecting places a stub in the vDSO's padding until the thaw.
        let vdso = try vdsoIdentity(pid: pid, maps: maps)
        guard let timerEntries = ProcTimers.parse((try? target.text("timers")) ?? "") else {
            throw MitosisError.unsupported(feature: "restore", detail: "/proc/\(pid)/timers could not be parsed")
        }
        let tids = await tracer.threads(of: pid)
        let asking = ContinuousClock.now
        let answers = try await ask(tracer, target: target, tids: tids, timers: timerEntries)
        let injected = ContinuousClock.now - asking
        guard let bounds = RestoreRecord.MemoryBounds(procStat: try target.text("stat"), brk: answers.brk) else {
            throw MitosisError.system(operation: "parsing /proc/\(pid)/stat", errno: .invalidArgument)
        }
        let auxvBytes = try target.bytes("auxv")
        let auxv = stride(from: 0, to: auxvBytes.count - 7, by: 8).map { offset in
            auxvBytes[offset..<offset + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        let executable = try target.readLink("exe")

        var threads: [RestoreRecord.ThreadRestoreState] = []
        for (index, tid) in tids.enumerated() {
            let robust = try Kernel.robustList(tid)
            threads.append(RestoreRecord.ThreadRestoreState(tid: tid, clearChildTid: answers.clearChildTids[index],
                                                            robustList: robust.head, robustListLength: robust.length))
        }
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
        var record = RestoreRecord(bounds: bounds, auxv: auxv, executable: executable, vdso: vdso, signalActions: answers.actions,
                             threads: threads, mappingFlags: [],
                             posixTimers: timerEntries.count)
        record.pipes = pipes
        record.clocks = answers.clocks
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
        record.processState = try await ProcessStateCapture.capture(tracer, target: target, tids: tids, timers: timerEntries,
                                                                    answers: answers.processState)
        return (record, injected)
    }

    /// What only the process itself can tell, asked by injected calls.
    struct Answers {
        var brk: UInt64
        var actions: [RestoreRecord.SignalAction]
        var clearChildTids: [UInt64]
        var clocks: RestoreRecord.Clocks
        var processState: ProcessStateCapture.Answers
    }

    /// Asks every question in one scratch mapping: one injected program per thread (its calls
    /// run with one stop, `Tracer.runProgram`) where the thread can run one, else one injected
    /// call at a time. Answers that are memory go to the scratch mapping's data area:
    ///
    ///     0                signal dispositions (64 × 32 bytes: handler, flags, restorer, mask)
    ///     2048             clear_child_tid words (8 bytes per thread)
    ///     +8·threads       CLOCK_MONOTONIC, CLOCK_BOOTTIME (16 bytes each)
    ///     +32              3 itimervals (32 bytes each)
    ///     +96              per thread: stack_t (24 bytes) and the parent-death signal (8)
    ///     +32·threads      per POSIX timer: an itimerspec (32 bytes)
    private static func ask(_ tracer: Tracer, target: TargetProcess, tids: [Int32], timers: [ProcTimers.Entry]) async throws -> Answers {
        let pid = target.pid
        // Only handled signals (and Linux.SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT matter even at
        // SIG_DFL) need asking; /proc tells the default and ignored ones apart.
        let status = ProcStatus(parsing: try target.text("status"))
        let caught = status["SigCgt"].flatMap { UInt64($0, radix: 16) } ?? UInt64.max
        let ignored = status["SigIgn"].flatMap { UInt64($0, radix: 16) } ?? 0
        let signals = (1...64).filter { caught & (1 << UInt64($0 - 1)) != 0 || $0 == Linux.SIGCHLD }
        let main = tids.contains(pid) ? pid : (tids.first ?? pid)

        let tidsAt = 2048, clocksAt = tidsAt + 8 * tids.count, itimersAt = clocksAt + 32, threadsAt = itimersAt + 96
        let timersAt = threadsAt + 32 * tids.count, dataLength = timersAt + 32 * timers.count
        let mainCalls = 1 + signals.count + 2 + 3 + timers.count + 3 + 4
        // The main thread's program, then one of 4 calls per other thread (`perform`).
        let programLength = Tracer.programAreaSize(calls: mainCalls) + max(0, tids.count - 1) * Tracer.programAreaSize(calls: 4)
        let page = Int(PagemapFile.pageSize)
        let length = (programLength + dataLength + page - 1) / page * page
        // Executable for the program; a kernel (or policy) that refuses that gets the calls one by one.
        var program = true
        let scratch: UInt64
        do {
            scratch = try await tracer.injectMmap(length: length, protection: SyscallFlags.readWriteExecuteProtection)
        } catch is Errno {
            program = false
            scratch = try await tracer.injectMmap(length: length)
        }
        let data = scratch + UInt64(programLength)
        var calls: [(tid: Int32, call: InjectedCall)] = [(main, InjectedCall(SyscallNumber.brk, [0]))]
        for signal in signals {
            calls.append((main, InjectedCall(SyscallNumber.rt_sigaction, [UInt64(signal), 0, data + UInt64(signal - 1) * 32, 8])))
        }
        calls.append((main, InjectedCall(SyscallNumber.clock_gettime, [UInt64(ClockID.monotonic), data + UInt64(clocksAt)])))
        calls.append((main, InjectedCall(SyscallNumber.clock_gettime, [UInt64(ClockID.boottime), data + UInt64(clocksAt + 16)])))
        let processCalls = calls.count
        calls += ProcessStateCapture.calls(main: main, tids: tids, timers: timers, data: data,
                                           itimersAt: itimersAt, threadsAt: threadsAt, timersAt: timersAt)
        let tidAddressCalls = calls.count
        for (index, tid) in tids.enumerated() {
            calls.append((tid, InjectedCall(SyscallNumber.prctl, [40 /* PR_GET_TID_ADDRESS */, data + UInt64(tidsAt + index * 8)])))
        }
        let asked: Result<([UInt64], [UInt64], TimeSpec), any Error>
        do {
            let results = try await perform(tracer, calls, program: program ? (scratch, programLength) : nil)
            let realtime = try Kernel.clockNow(ClockID.realtime)
            var words = [UInt64](repeating: 0, count: dataLength / 8)
            let count = try words.withUnsafeMutableBytes { buffer throws(Errno) in
                try Kernel.readMemory(pid: pid, address: data, into: buffer)
            }
            guard count == dataLength else { throw MitosisError.system(operation: "reading the scratch mapping of \(pid)", errno: .ioError) }
            asked = .success((results, words, realtime))
        } catch {
            asked = .failure(error)
        }
        try await tracer.injectMunmap(address: scratch, length: length)
        let (results, words, realtime) = try asked.get()
        let actions = (0..<64).map { index in
            let wasAsked = caught & (1 << UInt64(index)) != 0 || index + 1 == Linux.SIGCHLD
            return wasAsked ? RestoreRecord.SignalAction(handler: words[index * 4], flags: words[index * 4 + 1],
                                                         restorer: words[index * 4 + 2], mask: words[index * 4 + 3])
                : RestoreRecord.SignalAction(handler: ignored & (1 << UInt64(index)) != 0 ? 1 : 0, flags: 0, restorer: 0, mask: 0)
        }
        let clock = clocksAt / 8
        let clocks = RestoreRecord.Clocks(monotonic: TimeSpec(seconds: Int64(bitPattern: words[clock]), nanoseconds: Int64(bitPattern: words[clock + 1])),
                                          boottime: TimeSpec(seconds: Int64(bitPattern: words[clock + 2]), nanoseconds: Int64(bitPattern: words[clock + 3])),
                                          realtime: realtime)
        let state = ProcessStateCapture.Answers(results: Array(results[processCalls..<tidAddressCalls]), words: words,
                                                itimersAt: itimersAt, threadsAt: threadsAt, timersAt: timersAt)
        return Answers(brk: results[0], actions: actions, clearChildTids: Array(words[(tidsAt / 8)..<(tidsAt / 8 + tids.count)]),
                       clocks: clocks, processState: state)
    }

    /// Runs `calls`, each in its thread: one injected program per thread (in the order the
    /// threads first appear, each in its own part of `program`, all started before the first is
    /// waited for: `Tracer.runPrograms`) where the thread can run one and its program fits, else
    /// one call at a time. Returns the results in order; a call that failed throws its `Errno`.
    static func perform(_ tracer: Tracer, _ calls: [(tid: Int32, call: InjectedCall)],
                        program: (address: UInt64, length: Int)?) async throws -> [UInt64] {
        var order: [Int32] = []
        var groups: [Int32: [Int]] = [:]
        for (index, entry) in calls.enumerated() {
            if groups[entry.tid] == nil { order.append(entry.tid) }
            groups[entry.tid, default: []].append(index)
        }
        var raw: [Int32: [Int64]] = [:]
        if let program {
            var programs: [(tid: Int32?, calls: [InjectedCall], area: UInt64)] = []
            var offset = 0
            for tid in order {
                let group = groups[tid]!.map { calls[$0].call }
                let size = Tracer.programAreaSize(calls: group.count)
                guard offset + size <= program.length else { break }
                programs.append((tid, group, program.address + UInt64(offset)))
                offset += size
            }
            for (entry, results) in zip(programs, try await tracer.runPrograms(programs)) { raw[entry.tid!] = results }
        }
        var results = [UInt64](repeating: 0, count: calls.count)
        for tid in order {
            let indices = groups[tid]!
            if raw[tid] == nil {
                var one: [Int64] = []
                for index in indices { one.append(try await tracer.injectSyscall(calls[index].call.number, calls[index].call.arguments, in: tid)) }
                raw[tid] = one
            }
            for (index, result) in zip(indices, raw[tid]!) {
                if result < 0 && result >= -4095 { throw Errno(rawValue: Int32(-result)) }
                results[index] = UInt64(bitPattern: result)
            }
        }
        return results
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
                                          xxh64: Checksum.hex(Checksum.xxh64(Tracer.vdsoAsMade(bytes))))
    }
}
