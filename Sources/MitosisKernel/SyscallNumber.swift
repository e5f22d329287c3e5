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
    public static let brk = MITOSIS_SYS_brk
    public static let mprotect = MITOSIS_SYS_mprotect
    public static let madvise = MITOSIS_SYS_madvise
    public static let rt_sigaction = MITOSIS_SYS_rt_sigaction
    public static let arch_prctl = MITOSIS_SYS_arch_prctl
    public static let openat = MITOSIS_SYS_openat
    public static let lseek = MITOSIS_SYS_lseek
    public static let dup3 = MITOSIS_SYS_dup3
    public static let chdir = MITOSIS_SYS_chdir
    public static let umask = MITOSIS_SYS_umask
    public static let set_tid_address = MITOSIS_SYS_set_tid_address
    public static let set_robust_list = MITOSIS_SYS_set_robust_list
    public static let eventfd2 = MITOSIS_SYS_eventfd2
    public static let pipe2 = MITOSIS_SYS_pipe2
    public static let epoll_create1 = MITOSIS_SYS_epoll_create1
    public static let epoll_ctl = MITOSIS_SYS_epoll_ctl
    public static let rseq = MITOSIS_SYS_rseq
    public static let clone3 = MITOSIS_SYS_clone3
    public static let socket = Int(SYS_socket)
    public static let socketpair = Int(SYS_socketpair)
    public static let bind = Int(SYS_bind)
    public static let listen = Int(SYS_listen)
    public static let connect = Int(SYS_connect)
    public static let accept4 = Int(SYS_accept4)
    public static let setsockopt = Int(SYS_setsockopt)
    public static let getsockopt = Int(SYS_getsockopt)
    public static let sendmsg = Int(SYS_sendmsg)
    public static let unlink = Int(SYS_unlink)
    public static let timerfd_create = Int(SYS_timerfd_create)
    public static let timerfd_settime = Int(SYS_timerfd_settime)
    public static let signalfd4 = Int(SYS_signalfd4)
    public static let memfd_create = Int(SYS_memfd_create)
    public static let ftruncate = Int(SYS_ftruncate)
    public static let inotify_init1 = Int(SYS_inotify_init1)
    public static let inotify_add_watch = Int(SYS_inotify_add_watch)
    public static let inotify_rm_watch = Int(SYS_inotify_rm_watch)
    public static let shmat = Int(SYS_shmat)
    public static let shmdt = Int(SYS_shmdt)
    public static let seccomp = Int(SYS_seccomp)
    public static let ioctl = Int(SYS_ioctl)
    public static let pause = Int(SYS_pause)
    public static let tgkill = Int(SYS_tgkill)
}

/// Flag values for the arguments of injected calls (`Tracer.injectMmap`,
/// `Tracer.createTargetUserfaultfd`), so that clients need not import the C layer either.
public enum SyscallFlags {
    /// `PROT_READ | PROT_WRITE`.
    public static let readWriteProtection = PROT_READ | PROT_WRITE
    /// `PROT_READ | PROT_WRITE | PROT_EXEC`: a scratch area that holds an injected program.
    public static let readWriteExecuteProtection = PROT_READ | PROT_WRITE | PROT_EXEC
    /// `MAP_PRIVATE | MAP_ANONYMOUS`.
    public static let privateAnonymousMapping = MAP_PRIVATE | MAP_ANONYMOUS
    /// `O_CLOEXEC | O_NONBLOCK`.
    public static let closeOnExecNonBlocking = O_CLOEXEC | O_NONBLOCK
}
