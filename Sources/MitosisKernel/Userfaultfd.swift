import CMitosis
import Glibc
import SystemPackage

/// A userfaultfd held by Mitosis (brought over from the target with `pidfd_getfd`: a userfaultfd
/// acts on the address space that created it). Every request here runs in Mitosis while the
/// target keeps running. Closing the last reference unregisters every range it still holds.
package struct Userfaultfd: Sendable {
    package let descriptor: FileDescriptor

    package init(descriptor: FileDescriptor) { self.descriptor = descriptor }

    /// `UFFD_FEATURE_*` bits.
    package struct Features: OptionSet, Hashable, Sendable {
        package let rawValue: UInt64
        package init(rawValue: UInt64) { self.rawValue = rawValue }
        /// Write-protect faults are resolved by the kernel itself, which records the page as written.
        package static let writeProtectAsync = Features(rawValue: MITOSIS_UFFD_FEATURE_WP_ASYNC)
        /// Write-protection also applies to pages never populated yet.
        package static let writeProtectUnpopulated = Features(rawValue: MITOSIS_UFFD_FEATURE_WP_UNPOPULATED)
    }

    /// Handshakes the API version and enables `features`; returns the features the kernel offers.
    /// The corresponding system call is `ioctl(UFFDIO_API)`.
    @discardableResult
    package func enable(_ features: Features) throws(Errno) -> Features {
        var offered: UInt64 = 0, ioctls: UInt64 = 0
        try Kernel.check { mitosis_uffdio_api(descriptor.rawValue, features.rawValue, &offered, &ioctls) }
        return Features(rawValue: offered)
    }

    /// Registers [start, end) for write-protect tracking.
    /// The corresponding system call is `ioctl(UFFDIO_REGISTER)`.
    package func registerWriteProtect(start: UInt64, end: UInt64) throws(Errno) {
        var ioctls: UInt64 = 0
        try Kernel.check { mitosis_uffdio_register(descriptor.rawValue, start, end - start, MITOSIS_UFFDIO_REGISTER_MODE_WP, &ioctls) }
    }

    /// Registers [start, end) for missing-page faults, so that `copy` may fill its pages.
    /// The corresponding system call is `ioctl(UFFDIO_REGISTER)` with `UFFDIO_REGISTER_MODE_MISSING`.
    package func registerMissing(start: UInt64, end: UInt64) throws(Errno) {
        try Kernel.check { mitosis_uffdio_register_missing(descriptor.rawValue, start, end - start) }
    }

    /// Fills the not yet present pages at `address` with `bytes` (page-aligned, page-sized):
    /// page allocation and copy in one step, cheaper than `process_vm_writev`'s fault-in.
    /// The corresponding system call is `ioctl(UFFDIO_COPY)`.
    package func copy(to address: UInt64, from bytes: UnsafeRawBufferPointer) throws(Errno) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        try Kernel.check { mitosis_uffdio_copy_all(descriptor.rawValue, address, base, UInt64(bytes.count)) }
    }

    /// Unregisters [start, end), lifting the write-protection of its pages.
    /// The corresponding system call is `ioctl(UFFDIO_UNREGISTER)`.
    package func unregister(start: UInt64, end: UInt64) throws(Errno) {
        try Kernel.check { mitosis_uffdio_unregister(descriptor.rawValue, start, end - start) }
    }

    /// Sets (`true`) or clears write-protection on [start, end).
    /// The corresponding system call is `ioctl(UFFDIO_WRITEPROTECT)`.
    package func writeProtect(start: UInt64, end: UInt64, _ protect: Bool) throws(Errno) {
        try Kernel.check {
            mitosis_uffdio_writeprotect(descriptor.rawValue, start, end - start, protect ? MITOSIS_UFFDIO_WRITEPROTECT_MODE_WP : 0)
        }
    }

    package func close() { try? descriptor.close() }
}
