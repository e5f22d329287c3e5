import CMitosis
import Glibc
import SystemPackage

extension Kernel {
    /// Creates a userfaultfd for this process's own address space.
    /// The corresponding system call is `userfaultfd`.
    package static func userfaultfd(flags: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try check { mitosis_syscall6(MITOSIS_SYS_userfaultfd, Int(flags), 0, 0, 0, 0, 0) }))
    }

    /// The flags a dirty-page tracker creates its userfaultfd with: close-on-exec, non-blocking,
    /// and user-mode faults only (which an unprivileged target needs).
    package static let trackingUserfaultfdFlags: Int32 = O_CLOEXEC | O_NONBLOCK | MITOSIS_UFFD_USER_MODE_ONLY
}
