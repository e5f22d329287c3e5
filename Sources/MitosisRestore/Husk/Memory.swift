import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 2: memory.
extension Tracer {
    /// Maps every mapping of the image at its address with its protections, flags and file,
    /// then writes the pages the image holds (clean file pages come from the file, untouched
    /// pages stay zero). `images` is the image's chain, newest first.
    func mapMemory(_ plan: RestorePlan, images: [CheckpointImage], area: WorkArea) throws {
        let vmFlags = Self.vmFlags(plan.record)
        let restored = plan.manifest.mappings.filter { !RestorePlan.isKernelProvided($0) }
        // A tree member mapping another member's shared memory gets its pages from that member.
        let stored = restored.filter { plan.tree?.sharedMemory[$0.start] == nil }.flatMap(\.heldRanges)
        let pages = PageSource(images: images, loads: PageSource.loads(of: stored, images: images))
        defer { pages.close() }
        // Private anonymous memory is filled with UFFDIO_COPY (page allocation and copy in one
        // step) through a userfaultfd the husk creates and keeps no descriptor of; without one
        // (refused by seccomp or sysctl) every page goes through process_vm_writev.
        let uffd = try? fillUserfaultfd()
        defer { uffd?.close() }
        var openFile: (path: String, flags: Int32, fd: UInt64)?
        for mapping in restored {
            let name = "0x\(String(mapping.start, radix: 16)) \(mapping.path ?? "[anonymous]")"
            let perms = Array(mapping.perms.utf8)
            let protection = (perms[0] == UInt8(ascii: "r") ? Linux.PROT_READ : 0) | (perms[1] == UInt8(ascii: "w") ? Linux.PROT_WRITE : 0)
                | (perms[2] == UInt8(ascii: "x") ? Linux.PROT_EXEC : 0)
            let shared = perms[3] == UInt8(ascii: "s")
            // Shared memory of a tree that an earlier member created: that member wrote its pages.
            let sharedWith = plan.tree?.sharedMemory[mapping.start]
            let segment = mapping.kind == MemoryMapping.Kind.sysvSharedMemory.rawValue ? plan.segmentId(at: mapping.start) : nil
            // A SysV segment other processes have attached keeps their content, not the image's.
            let held = sharedWith != nil || segment.map { !plan.sharedMemoryFilled.contains($0) } == true ? []
                : mapping.heldRanges
            // shmat maps read-write; the recorded protection is set afterwards.
            let mapProtection = held.isEmpty && segment == nil ? protection : protection | Linux.PROT_WRITE | (segment == nil ? 0 : Linux.PROT_READ)
            let flags = vmFlags[mapping.start] ?? []
            var mapFlags = (shared ? Linux.MAP_SHARED : Linux.MAP_PRIVATE) | 0x100000 /* MAP_FIXED_NOREPLACE */
            if flags.contains("gd") || mapping.kind == MemoryMapping.Kind.stack.rawValue { mapFlags |= Linux.MAP_GROWSDOWN }
            let length = mapping.end - mapping.start
            var address: UInt64
            if let owner = sharedWith {
                // The one object, mapped again through the creator's map_files entry (as CRIU shares shmem).
                let path = "/proc/\(owner.owner)/map_files/\(String(owner.start, radix: 16))-\(String(owner.end, radix: 16))"
                let open = (protection & Linux.PROT_WRITE != 0 ? Linux.O_RDWR : Linux.O_RDONLY) | Linux.O_CLOEXEC
                let fd = try huskCall("opening the shared memory of process \(owner.owner) at \(path)", SyscallNumber.openat,
                                      [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(open), 0])
                let mapped = Result { try huskCall("mapping \(name), shared with process \(owner.owner)", SyscallNumber.mmap,
                                                   [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags), fd, mapping.offset]) }
                try huskCall("closing \(path)", SyscallNumber.close, [fd])
                address = try mapped.get()
            } else if mapping.kind == MemoryMapping.Kind.file.rawValue, let path = mapping.path {
                let open = (shared && protection & Linux.PROT_WRITE != 0 ? Linux.O_RDWR : Linux.O_RDONLY) | Linux.O_CLOEXEC
                // A file's mappings follow one another: it is opened once for all of them.
                if let file = openFile, file.path != path || file.flags != open {
                    openFile = nil
                    try huskCall("closing \(file.path)", SyscallNumber.close, [file.fd])
                }
                if openFile == nil {
                    let fd = try huskCall("opening \(path)", SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(open), 0])
                    openFile = (path, open, fd)
                }
                address = try huskCall("mapping \(name)", SyscallNumber.mmap, [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags), openFile!.fd, mapping.offset])
            } else if let segment {
                address = try huskCall("attaching SysV segment \(segment) at \(name)", SyscallNumber.shmat,
                                       [UInt64(segment), mapping.start, protection & Linux.PROT_EXEC != 0 ? Kernel.attachExecutable : 0])
            } else {
                address = try huskCall("mapping \(name)", SyscallNumber.mmap,
                                       [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags | Linux.MAP_ANONYMOUS), UInt64.max, 0])
            }
            guard address == mapping.start else {
                throw StepFailure(step: "mapping \(name)", detail: "the kernel placed it at 0x\(String(address, radix: 16))")
            }
            // Registration is refused for what UFFDIO_COPY cannot fill (shared, file-backed).
            let copier = mapping.isShared || held.isEmpty || mapping.kind == MemoryMapping.Kind.file.rawValue ? nil
                : uffd.flatMap { (try? $0.registerMissing(start: mapping.start, end: mapping.end)) != nil ? $0 : nil }
            for range in held { try fill(range, pages: pages, copier: copier, name: mapping.name) }
            if let copier {
                // Nothing of the userfaultfd may stay on the mapping once the process runs.
                do { try copier.unregister(start: mapping.start, end: mapping.end) } catch {
                    throw StepFailure(step: "unregistering \(mapping.name) from the fill userfaultfd", detail: "\(error)")
                }
            }
            try completeMapping(mapping, flags: flags, wasWritable: mapProtection != protection, area: area)
        }
        if let file = openFile { try huskCall("closing \(file.path)", SyscallNumber.close, [file.fd]) }
    }

    /// The `VmFlags` the image recorded, by mapping start.
    static func vmFlags(_ record: RestoreRecord) -> [UInt64: Set<String>] {
        Dictionary(record.mappingFlags.map { ($0.start, Set($0.vmFlags)) }, uniquingKeysWith: { a, _ in a })
    }

    /// Creates `mapping` at its address with its flags and file, writable (for its pages to be
    /// written) when `writable`; `completeMapping` gives it its own protection afterwards.
    func createMapping(_ mapping: CheckpointMapping, flags: Set<String>, writable: Bool, area: WorkArea) throws {
        let protection = mapping.protection
        let mapProtection = writable ? protection | Linux.PROT_WRITE : protection
        var mapFlags = (mapping.isShared ? Linux.MAP_SHARED : Linux.MAP_PRIVATE) | 0x100000 /* MAP_FIXED_NOREPLACE */
        if flags.contains("gd") || mapping.kind == MemoryMapping.Kind.stack.rawValue { mapFlags |= Linux.MAP_GROWSDOWN }
        let length = mapping.end - mapping.start
        let address: UInt64
        if mapping.kind == MemoryMapping.Kind.file.rawValue, let path = mapping.path {
            let open = (mapping.isShared && protection & Linux.PROT_WRITE != 0 ? Linux.O_RDWR : Linux.O_RDONLY) | Linux.O_CLOEXEC
            let fd = try huskCall("opening \(path)", SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(open), 0])
            let mapped = Result { try huskCall("mapping \(mapping.name)", SyscallNumber.mmap, [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags), fd, mapping.offset]) }
            try huskCall("closing \(path)", SyscallNumber.close, [fd])
            address = try mapped.get()
        } else {
            address = try huskCall("mapping \(mapping.name)", SyscallNumber.mmap,
                                   [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags | Linux.MAP_ANONYMOUS), UInt64.max, 0])
        }
        guard address == mapping.start else {
            throw StepFailure(step: "mapping \(mapping.name)", detail: "the kernel placed it at 0x\(String(address, radix: 16))")
        }
    }

    /// After its pages are written: the mapping's own protection, its madvise advice and its name.
    func completeMapping(_ mapping: CheckpointMapping, flags: Set<String>, wasWritable: Bool, area: WorkArea) throws {
        let length = mapping.end - mapping.start
        if wasWritable && mapping.protection & Linux.PROT_WRITE == 0 {
            try huskCall("protecting \(mapping.name)", SyscallNumber.mprotect, [mapping.start, length, UInt64(mapping.protection)])
        }
        // madvise advice kept in VmFlags: don't fork, wipe on fork, don't dump, huge pages or not.
        for (flag, advice) in Self.adviceFlags where flags.contains(flag) {
            try huskCall("advising \(mapping.name) (\(flag))", SyscallNumber.madvise, [mapping.start, length, UInt64(advice)])
        }
        if let path = mapping.path, path.hasPrefix("[anon:"), path.hasSuffix("]") {
            let label = String(path.dropFirst(6).dropLast())
            try huskCall("naming \(mapping.name)", SyscallNumber.prctl,
                         [0x5356_4d41 /* PR_SET_VMA */, 0 /* PR_SET_VMA_ANON_NAME */, mapping.start, length, try huskText(label, area: area)])
        }
    }

    /// `VmFlags` letters and the madvise advice that sets them.
    static let adviceFlags: [(String, Int)] = [("dc", 10), ("wf", 18), ("dd", 16), ("hg", 14), ("nh", 15)]

    /// A userfaultfd of the husk's address space, held only by Mitosis (the husk's descriptor is
    /// closed at once), ready for missing-mode registration and UFFDIO_COPY.
    func fillUserfaultfd() throws -> Userfaultfd {
        let uffd = Userfaultfd(descriptor: try createTargetUserfaultfd())
        do { try uffd.enable([]) } catch {
            uffd.close()
            throw error
        }
        return uffd
    }

    /// Writes the pages of `range` from the chain (`PageSource.pieces`) with UFFDIO_COPY through
    /// `copier` (its mapping registered) or else with process_vm_writev.
    func fill(_ range: PageRange, pages: PageSource, copier: Userfaultfd?, name: String) throws {
        try pages.pieces(of: range) { at, slice in
            if let copier {
                do { try copier.copy(to: at, from: slice) } catch {
                    throw StepFailure(step: "writing pages of \(name)", detail: "UFFDIO_COPY: \(error)")
                }
            } else {
                try huskWrite("writing pages of \(name)", at, slice)
            }
        }
    }
}

/// The page runs of a restore, read and checked on a thread of their own up to `depth` runs
/// ahead of the writes (one after the other, reading and checking left the writes waiting and
/// the other way round), each image's data file opened once, into up to `depth` buffers reused for
/// every run: reading costs no fresh memory of Mitosis's own per run.
final class PageSource: @unchecked Sendable {  // mutable state guarded by `condition`
    /// One run to read: image `image` (index in the chain) holds it. Its pages below `end` are
    /// the newest the chain has; from `end` on a newer image holds pages of the run's range.
    struct Load: Equatable {
        var image: Int
        var run: PageRun
        var end: UInt64
    }

    private let images: [CheckpointImage]
    private let loads: [Load]
    private let condition = NSCondition()
    private var free: [UnsafeMutableRawBufferPointer]
    private let buffers: [UnsafeMutableRawBufferPointer]
    private var ready: [Int: Result<UnsafeMutableRawBufferPointer, StepFailure>] = [:]
    private var stopping = false, finished = false
    /// The next load the writes take, and the one they write from now.
    private var next = 0
    private var current: (load: Load, buffer: UnsafeMutableRawBufferPointer)?

    /// Starts reading `loads` in order (the order the writes ask for them).
    init(images: [CheckpointImage], loads: [Load], depth: Int = 16) {
        self.images = images
        self.loads = loads
        buffers = (0..<max(1, min(depth, loads.count))).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: ImageFormat.maxRunPages * Int(WorkArea.page), alignment: Int(WorkArea.page))
        }
        free = buffers
        let thread = Thread { [self] in readAhead() }
        thread.name = "mitosis-restore-read"
        thread.start()
    }

    /// The loads of `ranges` in the order `fill` writes them: for each address the newest image
    /// holding it. Stops where no image holds an address (the write there names it).
    static func loads(of ranges: [PageRange], images: [CheckpointImage]) -> [Load] {
        var loads: [Load] = []
        for range in ranges {
            var at = range.start
            while at < range.end, let load = holder(of: at, images: images) {
                if loads.last != load { loads.append(load) }
                at = min(load.end, range.end)
            }
            if at < range.end { break }
        }
        return loads
    }

    /// The newest image holding `address`, its run, and where that run stops being the newest:
    /// an older image's run may span pages a newer image stored again (a page written in
    /// checkpoint 2, then inherited by 3 next to pages of the full checkpoint 1), which must come
    /// from the newer image, as `CheckpointChain.read` takes them.
    private static func holder(of address: UInt64, images: [CheckpointImage]) -> Load? {
        for (index, image) in images.enumerated() {
            guard let run = image.run(containing: address) else { continue }
            let end = images[..<index].reduce(run.end) { end, newer in min(end, newer.firstRun(after: address)?.address ?? end) }
            return Load(image: index, run: run, end: end)
        }
        return nil
    }

    /// Hands `body` the bytes of `range`, piece by piece in address order: each page from the
    /// newest image whose index holds it (as `CheckpointChain.read` decides), one checked run
    /// (or the part of it no newer image overrides) at a time.
    func pieces(of range: PageRange, _ body: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws {
        var at = range.start
        while at < range.end {
            let (run, valid, bytes) = try run(containing: at, state: range.state)
            let end = min(valid, range.end)
            try body(at, UnsafeRawBufferPointer(rebasing: bytes[Int(at - run.address)..<Int(end - run.address)]))
            at = end
        }
    }

    /// The run holding `address` in the newest image that has it, where its pages stop being the
    /// newest (`Load.end`), and its checked bytes (valid until the next call).
    private func run(containing address: UInt64, state: PageState) throws -> (PageRun, UInt64, UnsafeRawBufferPointer) {
        let at = "0x\(String(address, radix: 16))"
        guard let load = Self.holder(of: address, images: images) else {
            throw StepFailure(step: "reading the image's pages at \(at)", detail: "recorded as \(state.rawValue) but no image in the chain holds it")
        }
        condition.lock()
        defer { condition.unlock() }
        if current?.load != load {
            if let done = current { free.append(done.buffer); current = nil; condition.broadcast() }
            guard next < loads.count, loads[next] == load else {
                throw StepFailure(step: "reading the image's pages at \(at)", detail: "asked out of the planned order")
            }
            while ready[next] == nil { condition.wait() }
            let result = ready.removeValue(forKey: next)!
            next += 1
            current = (load, try result.get())
        }
        return (load.run, load.end, UnsafeRawBufferPointer(rebasing: current!.buffer[..<Int(load.run.length)]))
    }

    /// Runs on the read-ahead thread: reads each load into a free buffer, stops at the first failure.
    private func readAhead() {
        var data: [Int: FileDescriptor] = [:]
        defer {
            for fd in data.values { try? fd.close() }
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        for (index, load) in loads.enumerated() {
            condition.lock()
            // Once every buffer is taken, the next read waits for half of them (or all that is
            // left to read) to be written out: one wake-up per batch of runs, not one per run
            // (under load a wake-up costs more than writing a run).
            if free.isEmpty {
                let batch = min(max(1, buffers.count / 2), loads.count - index)
                while free.count < batch && !stopping { condition.wait() }
            }
            guard !stopping else { condition.unlock(); return }
            let buffer = free.removeLast()
            condition.unlock()
            let result: Result<UnsafeMutableRawBufferPointer, StepFailure>
            do {
                let image = images[load.image]
                if data[load.image] == nil { data[load.image] = try image.openPageData() }
                try image.read(load.run, from: data[load.image]!, into: buffer)
                result = .success(buffer)
            } catch {
                result = .failure(StepFailure(step: "reading the image's pages at 0x\(String(load.run.address, radix: 16))", detail: "\(error)"))
            }
            condition.lock()
            ready[index] = result
            if case .failure = result { stopping = true }
            condition.broadcast()
            condition.unlock()
            if case .failure = result { return }
        }
    }

    /// Stops the read-ahead thread and waits for it: nothing of it outlives the memory phase.
    func close() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }

    deinit { for buffer in buffers { buffer.deallocate() } }
}

extension CheckpointMapping {
    /// The page ranges whose bytes an image of the chain holds.
    var heldRanges: [PageRange] { pages.filter { $0.state == .stored || $0.state == .inherited } }
    var isShared: Bool { perms.utf8.dropFirst(3).first == UInt8(ascii: "s") }
    /// `PROT_*` of its permission letters.
    var protection: Int32 {
        let perms = Array(perms.utf8)
        guard perms.count >= 3 else { return 0 }
        return (perms[0] == UInt8(ascii: "r") ? Linux.PROT_READ : 0) | (perms[1] == UInt8(ascii: "w") ? Linux.PROT_WRITE : 0)
            | (perms[2] == UInt8(ascii: "x") ? Linux.PROT_EXEC : 0)
    }
    /// How steps name it: `0x7f… /path` or `0x7f… [anonymous]`.
    var name: String { "0x\(String(start, radix: 16)) \(path ?? "[anonymous]")" }
}
