import CMitosis
import Glibc

/// System call numbers of this architecture for `Tracer.injectSyscall`, so that clients need
/// not import the C layer. Any other number works too.
public enum SyscallNumber {
    public static let read = MITOSIS_SYS_read
    public static let write = MITOSIS_SYS_write
    public static let close = MITOSIS_SYS_close
    public static let mmap = MITOSIS_SYS_mmap
    public static let munmap = MITOSIS_SYS_munmap
    public static let getpid = MITOSIS_SYS_getpid
    public static let gettid = MITOSIS_SYS_gettid
    public static let fcntl = MITOSIS_SYS_fcntl
    public static let userfaultfd = MITOSIS_SYS_userfaultfd
    public static let prctl = MITOSIS_SYS_prctl
    public static let sigaltstack = MITOSIS_SYS_sigaltstack
    public static let pause = Int(SYS_pause)
}

/// Flag values for the arguments of injected calls (`Tracer.injectMmap`,
/// `Tracer.createTargetUserfaultfd`), so that clients need not import the C layer either.
public enum SyscallFlags {
    /// `PROT_READ | PROT_WRITE`.
    public static let readWriteProtection = PROT_READ | PROT_WRITE
    /// `MAP_PRIVATE | MAP_ANONYMOUS`.
    public static let privateAnonymousMapping = MAP_PRIVATE | MAP_ANONYMOUS
    /// `O_CLOEXEC | O_NONBLOCK`.
    public static let closeOnExecNonBlocking = O_CLOEXEC | O_NONBLOCK
}
