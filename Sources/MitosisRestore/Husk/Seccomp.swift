import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Seccomp: the process's filters (or strict mode) go into the husk before its threads are
/// created, which inherit them as the originals did, oldest filter first. The husk is traced with
/// its filters suspended (`Tracer+Husk`), so the calls that finish the restore do not meet them;
/// they apply from the detach on. No filter is left out silently: a process restored without
/// its filters would run with less protection than it asked for.
extension Tracer {
    func restoreSeccomp(_ plan: RestorePlan) throws {
        guard let state = plan.record.seccomp else { return }
        guard seizeOptions & Ptrace.suspendSeccompOption != 0 else {
            throw StepFailure(step: "restoring seccomp", detail: "the husk's filters cannot be suspended while it is built (needs CAP_SYS_ADMIN)")
        }
        if state.mode == 1 {
            try huskCall("entering seccomp strict mode", SyscallNumber.seccomp, [0 /* SECCOMP_SET_MODE_STRICT */, 0, 0])
            return
        }
        let page = UInt64(PagemapFile.pageSize)
        for (index, filter) in state.filters.enumerated() {
            // struct sock_fprog (an unsigned short length, padding, a pointer), then the program.
            let length = (16 + UInt64(filter.program.count) * 8 + page - 1) / page * page
            let room = try huskCall("mapping room for seccomp filter \(index)", SyscallNumber.mmap,
                                    [0, length, UInt64(Linux.PROT_READ | Linux.PROT_WRITE), UInt64(Linux.MAP_PRIVATE | Linux.MAP_ANONYMOUS), UInt64.max, 0])
            defer { _ = try? huskCall("unmapping the room for seccomp filter \(index)", SyscallNumber.munmap, [room, length]) }
            var bytes = [UInt8](repeating: 0, count: 16)
            withUnsafeBytes(of: UInt16(filter.program.count).littleEndian) { bytes.replaceSubrange(0..<2, with: $0) }
            withUnsafeBytes(of: (room + 16).littleEndian) { bytes.replaceSubrange(8..<16, with: $0) }
            for instruction in filter.program { withUnsafeBytes(of: instruction) { bytes.append(contentsOf: $0) } }
            try bytes.withUnsafeBytes { try huskWrite("passing seccomp filter \(index)", room, $0) }
            try huskCall("installing seccomp filter \(index) (\(filter.program.count) instructions)", SyscallNumber.seccomp,
                         [1 /* SECCOMP_SET_MODE_FILTER */, filter.flags, room])
        }
    }
}
