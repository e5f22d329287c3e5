import Glibc
import SystemPackage

extension Kernel {
    /// Maps `length` bytes of private anonymous memory, read-write, populated on first touch.
    /// The corresponding system call is `mmap`.
    package static func mapAnonymous(length: Int) throws(Errno) -> UnsafeMutableRawPointer {
        guard let address = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              address != MAP_FAILED
        else { throw Errno(rawValue: errno) }
        return address
    }

    /// Unmaps memory mapped by `mapAnonymous`. The corresponding system call is `munmap`.
    package static func unmap(_ address: UnsafeMutableRawPointer, length: Int) {
        _ = munmap(address, length)
    }
}
