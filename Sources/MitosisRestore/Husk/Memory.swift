import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 2: memory.
extension Tracer {
    /// Maps every mapping of the image at its address with its protections, flags and file,
    /// then writes the pages the image holds (clean file pages come from the file, untouched
    /// pages stay zero).
    func mapMemory(_ plan: RestorePlan, chain: CheckpointChain, area: WorkArea) throws {
        let vmFlags = Dictionary(plan.record.mappingFlags.map { ($0.start, Set($0.vmFlags)) }, uniquingKeysWith: { a, _ in a })
        var cache: RunCache?
        for mapping in plan.manifest.mappings where !RestorePlan.isKernelProvided(mapping) {
            let name = "0x\(String(mapping.start, radix: 16)) \(mapping.path ?? "[anonymous]")"
            let perms = Array(mapping.perms.utf8)
            let protection = (perms[0] == UInt8(ascii: "r") ? Linux.PROT_READ : 0) | (perms[1] == UInt8(ascii: "w") ? Linux.PROT_WRITE : 0)
                | (perms[2] == UInt8(ascii: "x") ? Linux.PROT_EXEC : 0)
            let shared = perms[3] == UInt8(ascii: "s")
            let held = mapping.pages.filter { $0.state == .stored || $0.state == .inherited }
            let mapProtection = held.isEmpty ? protection : protection | Linux.PROT_WRITE
            let flags = vmFlags[mapping.start] ?? []
            var mapFlags = (shared ? Linux.MAP_SHARED : Linux.MAP_PRIVATE) | 0x100000 /* MAP_FIXED_NOREPLACE */
            if flags.contains("gd") || mapping.kind == MemoryMapping.Kind.stack.rawValue { mapFlags |= Linux.MAP_GROWSDOWN }
            let length = mapping.end - mapping.start
            var address: UInt64
            if mapping.kind == MemoryMapping.Kind.file.rawValue, let path = mapping.path {
                let open = (shared && protection & Linux.PROT_WRITE != 0 ? Linux.O_RDWR : Linux.O_RDONLY) | Linux.O_CLOEXEC
                let fd = try huskCall("opening \(path)", SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(open), 0])
                let mapped = Result { try huskCall("mapping \(name)", SyscallNumber.mmap, [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags), fd, mapping.offset]) }
                try huskCall("closing \(path)", SyscallNumber.close, [fd])
                address = try mapped.get()
            } else {
                address = try huskCall("mapping \(name)", SyscallNumber.mmap,
                                       [mapping.start, length, UInt64(mapProtection), UInt64(mapFlags | Linux.MAP_ANONYMOUS), UInt64.max, 0])
            }
            guard address == mapping.start else {
                throw StepFailure(step: "mapping \(name)", detail: "the kernel placed it at 0x\(String(address, radix: 16))")
            }
            for range in held { try fill(range, chain: chain, name: name, cache: &cache) }
            if mapProtection != protection {
                try huskCall("protecting \(name)", SyscallNumber.mprotect, [mapping.start, length, UInt64(protection)])
            }
            // madvise advice kept in VmFlags: don't fork, wipe on fork, don't dump, huge pages or not.
            for (flag, advice) in [("dc", 10), ("wf", 18), ("dd", 16), ("hg", 14), ("nh", 15)] where flags.contains(flag) {
                try huskCall("advising \(name) (\(flag))", SyscallNumber.madvise, [mapping.start, length, UInt64(advice)])
            }
            if let path = mapping.path, path.hasPrefix("[anon:"), path.hasSuffix("]") {
                let label = String(path.dropFirst(6).dropLast())
                try huskCall("naming \(name)", SyscallNumber.prctl,
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
    func fill(_ range: PageRange, chain: CheckpointChain, name: String, cache: inout RunCache?) throws {
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
}
