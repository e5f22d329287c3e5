import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Memfds and deleted files: files no path leads to any more, created anew from the content the
/// image keeps (`FileContents`).
extension Tracer {
    /// A memfd with its name, content, offset and seals (added last: a write seal would stop
    /// the refill). Sealing stays allowed only if the original allowed it.
    func createMemfd(_ descriptor: OpenDescriptor, _ contents: FileContents, area: WorkArea) throws -> UInt64 {
        let name = Self.memfdName(descriptor.path ?? "")
        let seals = contents.seals ?? 1
        let flags = (descriptor.flags & UInt32(Linux.O_CLOEXEC) != 0 ? 1 : 0) | (seals & 1 /* F_SEAL_SEAL */ == 0 ? 2 : 0)  // MFD_CLOEXEC, MFD_ALLOW_SEALING
        let fd = try huskCall("creating the memfd '\(name)' of fd \(descriptor.fd)", SyscallNumber.memfd_create,
                              [try huskText(name, area: area), UInt64(flags)])
        try fill(fd, descriptor, contents)
        if descriptor.flags & UInt32(Linux.O_NONBLOCK) != 0 {
            try huskCall("making fd \(descriptor.fd) non-blocking", SyscallNumber.fcntl, [fd, UInt64(Linux.F_SETFL), UInt64(Linux.O_NONBLOCK)])
        }
        if seals & ~1 != 0 || (seals & 1 != 0 && flags & 2 != 0) {
            try withCopy(of: fd, step: "sealing the memfd of fd \(descriptor.fd)") { copy throws(Errno) in try Kernel.addSeals(copy, seals) }
        }
        return fd
    }

    /// A file deleted while open, made again with its content and mode where it was, then
    /// unlinked (it shows as deleted again). If a new file took its name meanwhile, it is made
    /// nameless in the same directory (`O_TMPFILE`) instead. The descriptor itself is then opened
    /// through `/proc/self/fd` with its own flags, at its offset.
    func createDeletedFile(_ descriptor: OpenDescriptor, _ contents: FileContents, area: WorkArea) throws -> UInt64 {
        guard let path = descriptor.path else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no path") }
        let step = "recreating the deleted file \(path) of fd \(descriptor.fd)"
        let named = (try? Kernel.linkStatusAt(nil, path)) == nil
        let scratchFd: UInt64
        if named {
            scratchFd = try huskCall(step, SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText(path, area: area),
                                                                 UInt64(Linux.O_RDWR | Linux.O_CREAT | Linux.O_EXCL | Linux.O_CLOEXEC), UInt64(contents.mode)])
        } else {
            let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
            scratchFd = try huskCall(step, SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText(directory.isEmpty ? "/" : directory, area: area),
                                                                 UInt64(Linux.O_RDWR | Linux.O_TMPFILE | Linux.O_CLOEXEC), UInt64(contents.mode)])
        }
        let reopened = Result { () throws -> UInt64 in
            if named { try huskCall(step, SyscallNumber.unlink, [try huskText(path, area: area)]) }
            try fill(scratchFd, descriptor, contents)
            let flags = descriptor.flags & ~UInt32(Linux.O_CREAT | Linux.O_EXCL | Linux.O_TRUNC | Linux.O_NOCTTY)
            let fd = try huskCall(step, SyscallNumber.openat, [UInt64(bitPattern: -100), try huskText("/proc/self/fd/\(scratchFd)", area: area), UInt64(flags), 0])
            if descriptor.position > 0 {
                try huskCall("seeking fd \(descriptor.fd) to \(descriptor.position)", SyscallNumber.lseek, [fd, descriptor.position, UInt64(Linux.SEEK_SET)])
            }
            return fd
        }
        try huskCall("closing fd \(scratchFd)", SyscallNumber.close, [scratchFd])
        return try reopened.get()
    }

    /// Writes the content through a copy of `fd` and sets the offset (one description: the copy's is the descriptor's).
    private func fill(_ fd: UInt64, _ descriptor: OpenDescriptor, _ contents: FileContents) throws {
        guard let bytes = contents.bytes else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "the image does not hold its content") }
        try withCopy(of: fd, step: "writing the content of fd \(descriptor.fd)") { copy throws(Errno) in
            try Kernel.writeAll(copy, Array(bytes), at: 0)
            try Kernel.truncate(copy, to: Int(contents.size))
            try Kernel.seek(copy, to: descriptor.position)
        }
    }

    /// `/memfd:NAME` as `/proc` shows it, without the prefix.
    static func memfdName(_ path: String) -> String {
        path.hasPrefix("/memfd:") ? String(path.dropFirst(7)) : path
    }
}
