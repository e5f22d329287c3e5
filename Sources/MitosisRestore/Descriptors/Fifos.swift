import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// FIFOs (named pipes): opened again by path with their flags. Opening a FIFO's one end waits
/// for the other (or fails, non-blocking, for a writer), so each FIFO first gets a *keeper*, an
/// `O_RDWR | O_NONBLOCK` open of its path (which never waits), parked above every wanted number:
/// every end then opens at once, non-blocking, and gets its own `O_NONBLOCK` back. When both
/// ends were inside the process, the unread bytes are written through the keeper (a pipe
/// reopened by path is a new, empty one once its last holder is gone). The keepers are closed
/// with the other parked descriptors.
extension Tracer {
    /// Opens a keeper for each FIFO among `descriptors`, at `next` and up; by inode.
    func openFifoKeepers(_ descriptors: [OpenDescriptor], next: inout UInt64, area: WorkArea) throws -> [UInt64: UInt64] {
        var keepers: [UInt64: UInt64] = [:]
        for descriptor in descriptors where descriptor.kind == .fifo && keepers[descriptor.inode] == nil {
            guard let path = descriptor.path else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no path") }
            let step = "opening the FIFO \(path) to keep it open while its ends are opened"
            let fd = try huskCall(step, SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText(path, area: area),
                                                              UInt64(Linux.O_RDWR | Linux.O_NONBLOCK | Linux.O_CLOEXEC), 0])
            let slot = next
            next += 1
            try huskCall(step, SyscallNumber.dup3, [fd, slot, 0])
            try huskCall(step, SyscallNumber.close, [fd])
            keepers[descriptor.inode] = slot
        }
        return keepers
    }

    /// One end of a FIFO: opened non-blocking (its keeper is open), then given its own flags.
    func openFifo(_ descriptor: OpenDescriptor, area: WorkArea) throws -> UInt64 {
        guard let path = descriptor.path else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no path") }
        let flags = descriptor.flags & ~UInt32(Linux.O_CREAT | Linux.O_EXCL | Linux.O_TRUNC | Linux.O_NOCTTY)
        let fd = try huskCall("opening the FIFO \(path) as fd \(descriptor.fd)", SyscallNumber.openat,
                              [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(flags | UInt32(Linux.O_NONBLOCK)), 0])
        if flags & UInt32(Linux.O_NONBLOCK) == 0 {
            try huskCall("making fd \(descriptor.fd) blocking again", SyscallNumber.fcntl,
                         [fd, UInt64(Linux.F_SETFL), UInt64(flags & ~UInt32(Linux.O_NONBLOCK))])
        }
        return fd
    }

    /// Writes each FIFO's unread bytes through its keeper, when both its ends were inside.
    func refillFifos(_ descriptors: [OpenDescriptor], contents: [RestoreRecord.PipeContents], keepers: [UInt64: UInt64]) throws {
        for (inode, keeper) in keepers {
            let ends = descriptors.filter { $0.kind == .fifo && $0.inode == inode }
            let modes = Set(ends.map { $0.flags & 3 })
            guard modes.contains(2) || (modes.contains(0) && modes.contains(1)),
                  let pipe = contents.first(where: { $0.inode == inode }), !pipe.bytes.isEmpty else { continue }
            try withCopy(of: keeper, step: "refilling the FIFO \(ends.first?.path ?? "") of fd \(ends.first?.fd ?? -1)") { copy throws(Errno) in
                try Kernel.writeAll(copy, Array(pipe.bytes))
            }
        }
    }
}
