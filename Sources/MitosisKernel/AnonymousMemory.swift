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

    /// `mapAnonymous`, asking for transparent huge pages (`MADV_HUGEPAGE`; this kernel's default
    /// is `madvise`): for buffers that stream gigabytes, whose 4 KiB pages would each be faulted
    /// in, and pinned again by every direct-I/O write and `process_vm_readv` from them. Where
    /// huge pages are off the advice is refused and the memory is as `mapAnonymous`'s.
    package static func mapAnonymousHuge(length: Int) throws(Errno) -> UnsafeMutableRawPointer {
        let address = try mapAnonymous(length: length)
        _ = madvise(address, length, MADV_HUGEPAGE)
        return address
    }

    /// Unmaps memory mapped by `mapAnonymous`. The corresponding system call is `munmap`.
    package static func unmap(_ address: UnsafeMutableRawPointer, length: Int) {
        _ = munmap(address, length)
    }
}
