import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Regular files, directories and stateless character devices, opened again by path.
extension Tracer {
    /// A file, directory or stateless device: opened by path with its flags, at its offset.
    func openFile(_ descriptor: OpenDescriptor, area: WorkArea) throws -> UInt64 {
        guard let path = descriptor.path else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no path") }
        let flags = descriptor.flags & ~UInt32(Linux.O_CREAT | Linux.O_EXCL | Linux.O_TRUNC | Linux.O_NOCTTY)
        let fd = try huskCall("opening \(path) as fd \(descriptor.fd)", SyscallNumber.openat,
                              [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(flags), 0])
        if descriptor.position > 0, descriptor.kind != .characterDevice {
            try huskCall("seeking fd \(descriptor.fd) to \(descriptor.position)", SyscallNumber.lseek, [fd, descriptor.position, UInt64(Linux.SEEK_SET)])
        }
        return fd
    }
}
