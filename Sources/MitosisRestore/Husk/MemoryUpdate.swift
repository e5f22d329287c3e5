import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// What applying one epoch to a prepared husk changed.
public struct HuskUpdate: Codable, Sendable, Equatable {
    /// Pages written (stored by the epoch, or filling mappings created or grown).
    public var pagesWritten = 0
    /// Pages given back (`MADV_DONTNEED`) because the epoch no longer holds them.
    public var pagesDiscarded = 0
    /// Mappings created (new ones, and ones replaced because they changed otherwise than size or protection).
    public var mappingsCreated = 0
    /// Mappings unmapped (gone, or replaced).
    public var mappingsRemoved = 0
    /// Mappings resized or reprotected where they are.
    public var mappingsChanged = 0
    public var milliseconds: Double = 0
}

/// Phase 2 again, for a warm clone: a husk prepared with image N brought to image N+1.
///
/// Mappings are matched by start address. One with the same backing (file, offset, kind,
/// sharing, advice) is kept: its protection changed in place (`mprotect`), a private anonymous
/// one resized at its end (tail unmapped or mapped), and only the pages the epoch stored are
/// written; pages it no longer holds are discarded, so they read as zeros or as the file again.
/// Any other difference replaces the mapping: unmapped, mapped afresh, filled from the chain.
/// An epoch the husk cannot take (another pid, another vDSO, a mapping over the work area)
/// fails with a `StepFailure`: the caller then builds a new husk from the chain.
extension Tracer {
    func updateHusk(from old: CheckpointManifest, to image: CheckpointImage, area: WorkArea) throws -> HuskUpdate {
        let started = ContinuousClock.now
        let new = image.manifest
        let step = "applying \(image.path) to the prepared process"
        guard new.pid == old.pid else { throw StepFailure(step: step, detail: "it is process \(new.pid), the husk holds \(old.pid)") }
        guard let newRecord = new.restore, let oldRecord = old.restore else { throw StepFailure(step: step, detail: "the image records no restore state") }
        guard newRecord.vdso == oldRecord.vdso else { throw StepFailure(step: step, detail: "the vDSO moved") }
        if let refusal = RestorePlan.preparationProblems(new).first { throw StepFailure(step: step, detail: refusal.description) }
        let oldFlags = Self.vmFlags(oldRecord), newFlags = Self.vmFlags(newRecord)
        let before = old.mappings.filter { !RestorePlan.isKernelProvided($0) }
        let after = new.mappings.filter { !RestorePlan.isKernelProvided($0) }
        let oldByStart = Dictionary(before.map { ($0.start, $0) }, uniquingKeysWith: { a, _ in a })

        var kept: [(old: CheckpointMapping, new: CheckpointMapping)] = []
        var created: [CheckpointMapping] = []
        for mapping in after {
            if let previous = oldByStart[mapping.start],
               Self.sameBacking(previous, mapping, oldFlags[previous.start] ?? [], newFlags[mapping.start] ?? []),
               previous.end == mapping.end || Self.resizable(mapping) {
                kept.append((previous, mapping))
            } else {
                created.append(mapping)
            }
        }
        let keptStarts = Set(kept.map(\.new.start))
        let removed = before.filter { !keptStarts.contains($0.start) }
        let grownTails = kept.filter { $0.new.end > $0.old.end }.map { (start: $0.old.end, mapping: $0.new) }
        for (start, end) in created.map({ ($0.start, $0.end) }) + grownTails.map({ ($0.start, $0.mapping.end) })
        where start < area.end && area.start < end {
            throw StepFailure(step: step, detail: "memory at 0x\(String(start, radix: 16))-0x\(String(end, radix: 16)) overlaps the husk's work area")
        }
        var report = HuskUpdate()

        // 1. What is gone: removed and replaced mappings, shrunk tails.
        for mapping in removed {
            try huskCall("unmapping \(mapping.name)", SyscallNumber.munmap, [mapping.start, mapping.end - mapping.start])
        }
        report.mappingsRemoved = removed.count
        for (old, new) in kept where new.end < old.end {
            try huskCall("shrinking \(new.name)", SyscallNumber.munmap, [new.end, old.end - new.end])
        }

        // 2. What the pages need: kept mappings writable while written, tails and new mappings mapped.
        let oneEpoch = kept.map { pair in
            (pair: pair, stored: Self.clip(pair.new.pages, pair.new.start, min(pair.old.end, pair.new.end)).filter { $0.state == .stored },
             tail: pair.new.end > pair.old.end ? Self.clip(pair.new.heldRanges, pair.old.end, pair.new.end) : [])
        }
        var reprotected: [CheckpointMapping] = []
        for (pair, stored, tail) in oneEpoch {
            let writable = !stored.isEmpty || !tail.isEmpty
            let protection = writable ? pair.new.protection | Linux.PROT_WRITE : pair.new.protection
            let common = min(pair.old.end, pair.new.end) - pair.new.start
            if protection != pair.old.protection {
                try huskCall("protecting \(pair.new.name)", SyscallNumber.mprotect, [pair.new.start, common, UInt64(protection)])
            }
            if pair.new.end > pair.old.end {
                let flags = Linux.MAP_PRIVATE | Linux.MAP_ANONYMOUS | 0x100000 /* MAP_FIXED_NOREPLACE */
                let address = try huskCall("growing \(pair.new.name)", SyscallNumber.mmap,
                                           [pair.old.end, pair.new.end - pair.old.end, UInt64(protection), UInt64(flags), UInt64.max, 0])
                guard address == pair.old.end else {
                    throw StepFailure(step: "growing \(pair.new.name)", detail: "the kernel placed it at 0x\(String(address, radix: 16))")
                }
            }
            if protection != pair.new.protection { reprotected.append(pair.new) }
            if pair.new.end != pair.old.end || pair.new.protection != pair.old.protection { report.mappingsChanged += 1 }
        }
        for mapping in created {
            try createMapping(mapping, flags: newFlags[mapping.start] ?? [], writable: !mapping.heldRanges.isEmpty, area: area)
        }
        report.mappingsCreated = created.count

        // 3. Pages the epoch no longer holds read as zeros (anonymous) or as the file again.
        for (pair, _, _) in oneEpoch {
            let now = Self.clip(pair.new.pages, pair.new.start, min(pair.old.end, pair.new.end)).filter { $0.state == .cleanFile || $0.state == .neverTouched }
            for range in Self.intersect(now, pair.old.heldRanges) {
                try huskCall("discarding pages of \(pair.new.name)", SyscallNumber.madvise,
                             [range.start, range.end - range.start, UInt64(pair.new.isShared ? 9 /* MADV_REMOVE */ : 4 /* MADV_DONTNEED */)])
                report.pagesDiscarded += Int((range.end - range.start) / WorkArea.page)
            }
        }

        // 4. The pages, in address order: the epoch's own, and all held ones of new memory.
        var fills: [(range: PageRange, name: String)] = []
        for item in oneEpoch {
            for range in item.stored + item.tail { fills.append((range, item.pair.new.name)) }
        }
        for mapping in created {
            for range in mapping.heldRanges { fills.append((range, mapping.name)) }
        }
        fills.sort { $0.range.start < $1.range.start }
        // Only the epoch itself is read, unless new memory holds pages an older image stored.
        let needsChain = fills.contains { $0.range.state == PageState.inherited }
        let images = needsChain ? try Self.chainImages(image, step: step) : [image]
        let ranges: [PageRange] = fills.map { $0.range }
        let pages = PageSource(images: images, loads: PageSource.loads(of: ranges, images: images))
        defer { pages.close() }
        for (range, name) in fills {
            try fill(range, pages: pages, copier: nil, name: name)
            report.pagesWritten += Int((range.end - range.start) / WorkArea.page)
        }

        // 5. Own protections back, advice and names on new mappings.
        for mapping in reprotected {
            try huskCall("protecting \(mapping.name)", SyscallNumber.mprotect, [mapping.start, mapping.end - mapping.start, UInt64(mapping.protection)])
        }
        for mapping in created {
            try completeMapping(mapping, flags: newFlags[mapping.start] ?? [], wasWritable: !mapping.heldRanges.isEmpty, area: area)
        }
        let (seconds, attoseconds) = (ContinuousClock.now - started).components
        report.milliseconds = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return report
    }

    /// Whether `new` is the same memory as `old` (the same file at the same offset, or the same
    /// kind of anonymous memory; the same sharing and advice): only size and protection may differ.
    static func sameBacking(_ old: CheckpointMapping, _ new: CheckpointMapping, _ oldFlags: Set<String>, _ newFlags: Set<String>) -> Bool {
        let kept: Set<String> = ["gd", "dc", "wf", "dd", "hg", "nh"]
        return old.path == new.path && old.kind == new.kind && old.offset == new.offset && old.file == new.file
            && old.isShared == new.isShared && oldFlags.intersection(kept) == newFlags.intersection(kept)
    }

    /// Private anonymous memory (heap included) that may be resized at its end in place.
    static func resizable(_ mapping: CheckpointMapping) -> Bool {
        !mapping.isShared && [MemoryMapping.Kind.anonymous.rawValue, MemoryMapping.Kind.heap.rawValue].contains(mapping.kind)
    }

    /// `ranges` cut to `[start, end)`.
    static func clip(_ ranges: [PageRange], _ start: UInt64, _ end: UInt64) -> [PageRange] {
        ranges.compactMap { range in
            let from = max(range.start, start), to = min(range.end, end)
            return from < to ? PageRange(start: from, end: to, state: range.state) : nil
        }
    }

    /// The parts of `ranges` that `others` (sorted, disjoint) also cover.
    static func intersect(_ ranges: [PageRange], _ others: [PageRange]) -> [PageRange] {
        ranges.flatMap { range in clip(others, range.start, range.end).map { PageRange(start: $0.start, end: $0.end, state: range.state) } }
    }

    static func chainImages(_ image: CheckpointImage, step: String) throws -> [CheckpointImage] {
        do { return try image.chain().images } catch { throw StepFailure(step: step, detail: "opening its chain: \(error)") }
    }
}
