import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Pipes: created in the husk, refilled with their unread bytes.
extension Tracer {
    struct PipeEnd: Hashable {
        var inode: UInt64
        var write: Bool
    }

    /// Creates each pipe the process holds (`pipe2`), parks both ends at `next` and up,
    /// gives it its capacity and each end its `Linux.O_NONBLOCK`, and writes its unread bytes through
    /// a copy of the write end taken with `pidfd_getfd` (the same open file).
    func createPipes(_ descriptors: [OpenDescriptor], contents: [RestoreRecord.PipeContents],
                     next: inout UInt64, area: WorkArea) throws -> [PipeEnd: UInt64] {
        var parked: [PipeEnd: UInt64] = [:]
        for pipe in contents {
            let ends = descriptors.filter { $0.kind == .pipe && $0.inode == pipe.inode }
            guard let reader = ends.first(where: { $0.flags & 3 == 0 }), let writer = ends.first(where: { $0.flags & 3 == 1 }) else { continue }
            let step = "creating the pipe of fds \(ends.map(\.fd))"
            try huskCall(step, SyscallNumber.pipe2, [area.scratch + WorkArea.text, 0])
            var pair: (Int32, Int32) = (0, 0)
            let count = (try? withUnsafeMutableBytes(of: &pair) { buffer throws(Errno) in
                try Kernel.readMemory(pid: pid, address: area.scratch + WorkArea.text, into: buffer)
            }) ?? 0
            guard count == 8 else { throw StepFailure(step: step, detail: "cannot read the new descriptors") }
            for (fd, end, isWrite) in [(pair.0, reader, false), (pair.1, writer, true)] {
                let slot = next
                next += 1
                try huskCall(step, SyscallNumber.dup3, [UInt64(fd), slot, 0])
                try huskCall(step, SyscallNumber.close, [UInt64(fd)])
                if end.flags & UInt32(Linux.O_NONBLOCK) != 0 {
                    try huskCall("making fd \(end.fd) non-blocking", SyscallNumber.fcntl, [slot, UInt64(Linux.F_SETFL), UInt64(Linux.O_NONBLOCK)])
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
}
