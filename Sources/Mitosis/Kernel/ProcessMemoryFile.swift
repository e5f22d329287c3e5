import Glibc
import SystemPackage

/// An open `/proc/PID/mem`. Unlike `process_vm_readv`, it reads pages the target cannot read
/// itself (a `PROT_NONE` area holding data), the way a debugger does.
public struct ProcessMemoryFile: Sendable {
    public let descriptor: FileDescriptor

    /// Opens `/proc/PID/mem` for reading. The corresponding system call is `open`.
    public init(pid: Int32) throws(Errno) {
        descriptor = FileDescriptor(rawValue: try Kernel.check { open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC) })
    }

    /// Reads `buffer.count` bytes at `address`; returns how many were read before an unmapped
    /// page. The corresponding system call is `pread`.
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try Kernel.check {
                pread(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done,
                      Int(bitPattern: UInt(address) + UInt(done)))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func close() { try? descriptor.close() }
}
