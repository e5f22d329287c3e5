import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 1: an empty address space with the image's vDSO.
extension Tracer {
    /// Places the work area, leaves the husk's inherited rseq, unmaps everything the husk
    /// inherited from Mitosis, and maps the vDSO where the image had it.
    func prepareEmptyAddressSpace(_ plan: RestorePlan) throws -> WorkArea {
        let own = try huskMaps()
        let area = try Self.freeArea(avoiding: own.map { ($0.start, $0.end) } + plan.manifest.mappings.map { ($0.start, $0.end) })
        try huskCall("mapping the work area", SyscallNumber.mmap,
                     [area.start, UInt64(area.length), UInt64(Linux.PROT_READ | Linux.PROT_WRITE), UInt64(Linux.MAP_PRIVATE | Linux.MAP_ANONYMOUS | 0x100000 /* MAP_FIXED_NOREPLACE */),
                      UInt64.max, 0])
        let gadget: [UInt8] = [0x0f, 0x05, 0xcc]  // syscall; int3
        try gadget.withUnsafeBytes { try huskWrite("writing the gadget", area.gadget, $0) }
        try huskCall("protecting the gadget", SyscallNumber.mprotect, [area.gadget, WorkArea.page, UInt64(Linux.PROT_READ | Linux.PROT_EXEC)])
        useSyscallInstruction(area.gadget)

        // The husk inherited glibc's rseq registration: the kernel would write into unmapped memory.
        if let rseq = try? Ptrace.rseqConfiguration(pid), rseq.rseq_abi_pointer != 0 {
            try huskCall("unregistering the husk's rseq", SyscallNumber.rseq,
                         [rseq.rseq_abi_pointer, UInt64(rseq.rseq_abi_size), 1 /* RSEQ_FLAG_UNREGISTER */, UInt64(rseq.signature)])
        }
        // Two calls, below and above the work area (munmap passes over holes), rather than one
        // per inherited mapping: a Swift process has hundreds, and each injection is a round trip.
        let inherited = own.filter { $0.kind != .vsyscall && !($0.start >= area.start && $0.end <= area.end) }
        if let low = inherited.map(\.start).min(), let high = inherited.map(\.end).max() {
            for (start, end) in [(low, area.start), (area.end, high)] where start < end {
                try huskCall("unmapping what the husk inherited at 0x\(String(start, radix: 16))-0x\(String(end, radix: 16))",
                             SyscallNumber.munmap, [start, end - start])
            }
        }
        let vdso = plan.record.vdso
        try huskCall("mapping the vDSO at 0x\(String(vdso.vvar.start, radix: 16))",
                     SyscallNumber.arch_prctl, [0x2003 /* ARCH_MAP_VDSO_64 */, vdso.vvar.start])
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
}
