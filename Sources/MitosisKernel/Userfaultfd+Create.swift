import CMitosis
import SystemPackage

extension Kernel {
    /// Creates a userfaultfd for this process's own address space.
    /// The corresponding system call is `userfaultfd`.
    package static func userfaultfd(flags: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try check { mitosis_syscall6(MITOSIS_SYS_userfaultfd, Int(flags), 0, 0, 0, 0, 0) }))
    }
}
