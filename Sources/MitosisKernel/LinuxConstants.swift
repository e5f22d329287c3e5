import CMitosis
import Glibc

/// Flag and option values of the Linux ABI that restore passes to injected system calls, so that
/// the layers above need not import libc. Named as in C, so that they read like the man pages.
package enum Linux {
    // mmap, mprotect
    package static let PROT_READ = Glibc.PROT_READ
    package static let PROT_WRITE = Glibc.PROT_WRITE
    package static let PROT_EXEC = Glibc.PROT_EXEC
    package static let MAP_SHARED = Glibc.MAP_SHARED
    package static let MAP_PRIVATE = Glibc.MAP_PRIVATE
    package static let MAP_ANONYMOUS = Glibc.MAP_ANONYMOUS
    package static let MAP_GROWSDOWN = Glibc.MAP_GROWSDOWN
    package static let MAP_FIXED_NOREPLACE: Int32 = 0x100000

    // open, fcntl, lseek
    package static let O_RDONLY = Glibc.O_RDONLY
    package static let O_WRONLY = Glibc.O_WRONLY
    package static let O_RDWR = Glibc.O_RDWR
    package static let O_CREAT = Glibc.O_CREAT
    package static let O_EXCL = Glibc.O_EXCL
    package static let O_TRUNC = Glibc.O_TRUNC
    package static let O_NOCTTY = Glibc.O_NOCTTY
    package static let O_APPEND = Glibc.O_APPEND
    package static let O_NONBLOCK = Glibc.O_NONBLOCK
    package static let O_CLOEXEC = Glibc.O_CLOEXEC
    /// Not exported by Glibc's Swift module: `<asm-generic/fcntl.h>`.
    package static let O_PATH: Int32 = 0o10000000
    package static let O_TMPFILE: Int32 = 0o20200000
    package static let SEEK_SET = Glibc.SEEK_SET
    package static let F_SETFL = Glibc.F_SETFL
    package static let F_SETPIPE_SZ: Int32 = 1031
    package static let F_ADD_SEALS: Int32 = 1033
    package static let F_GET_SEALS: Int32 = 1034

    // signals
    package static let SIGKILL = Glibc.SIGKILL
    package static let SIGSTOP = Glibc.SIGSTOP
    package static let SIGCONT = Glibc.SIGCONT
    package static let SIGCHLD = Glibc.SIGCHLD
    package static let SIGTERM = Glibc.SIGTERM
    package static let SIGTRAP = Glibc.SIGTRAP

    // sockets
    package static let AF_UNIX = Int32(Glibc.AF_UNIX)
    package static let AF_INET = Int32(Glibc.AF_INET)
    package static let AF_INET6 = Int32(Glibc.AF_INET6)
    package static let SOCK_STREAM = Int32(Glibc.SOCK_STREAM.rawValue)
    package static let SOCK_DGRAM = Int32(Glibc.SOCK_DGRAM.rawValue)
    package static let SOCK_RAW = Int32(Glibc.SOCK_RAW.rawValue)
    package static let SOCK_SEQPACKET = Int32(Glibc.SOCK_SEQPACKET.rawValue)
    package static let SOL_SOCKET = Glibc.SOL_SOCKET
    package static let SO_REUSEADDR = Glibc.SO_REUSEADDR
    package static let SO_REUSEPORT = Glibc.SO_REUSEPORT
    package static let SO_KEEPALIVE = Glibc.SO_KEEPALIVE
    package static let SO_SNDBUF = Glibc.SO_SNDBUF
    package static let SO_RCVBUF = Glibc.SO_RCVBUF
    package static let SO_SNDBUFFORCE: Int32 = 32
    package static let SO_RCVBUFFORCE: Int32 = 33
    package static let SO_BROADCAST = Glibc.SO_BROADCAST
    package static let SO_PASSCRED = Glibc.SO_PASSCRED
    package static let SO_PEEK_OFF: Int32 = 42
    package static let IPPROTO_TCP = Int32(Glibc.IPPROTO_TCP)
    package static let IPPROTO_IPV6 = Int32(Glibc.IPPROTO_IPV6)
    package static let TCP_NODELAY = Int32(Glibc.TCP_NODELAY)
    package static let TCP_KEEPIDLE = Int32(Glibc.TCP_KEEPIDLE)
    package static let TCP_KEEPINTVL = Int32(Glibc.TCP_KEEPINTVL)
    package static let TCP_KEEPCNT = Int32(Glibc.TCP_KEEPCNT)
    package static let TCP_DEFER_ACCEPT = Int32(Glibc.TCP_DEFER_ACCEPT)
    package static let TCP_FASTOPEN: Int32 = 23
    package static let IPV6_V6ONLY = Int32(Glibc.IPV6_V6ONLY)
}
