import CMitosis
import Glibc
import SystemPackage

/// A short-lived forked child to try kernel features on (`mitosis check`): it only waits, dies
/// with its parent, and shares with this process one pipe (same descriptor number, same open
/// file), a marker string and a present page (same addresses). `end()` kills and reaps it.
public final class ProbeChild: @unchecked Sendable {
    private var raw = mitosis_probe_child()
    private var ended = false

    public var pid: Int32 { raw.pid }
    /// A descriptor number that refers to the same open file (a pipe's read end) in both processes.
    public var sharedFD: Int32 { raw.shared_fd }
    /// Where the marker string lives, in both processes.
    public var markerAddress: UInt64 { raw.marker_address }
    /// The marker's bytes, as the child holds them.
    public let marker = Array("mitosis kernel probe marker".utf8)
    /// A page-aligned page present in both processes.
    public var pageAddress: UInt64 { raw.page_address }

    /// Forks the child. The corresponding system call is `fork`.
    public init() throws(Errno) {
        try Kernel.check { mitosis_probe_child_spawn(&raw) }
    }

    /// Kills and reaps the child. Idempotent. The corresponding system calls are `kill` and `waitpid`.
    public func end() {
        guard !ended else { return }
        ended = true
        withUnsafePointer(to: &raw) { mitosis_probe_child_end($0) }
    }

    deinit { end() }
}

extension Kernel {
    /// Creates a userfaultfd for this process's own address space.
    /// The corresponding system call is `userfaultfd`.
    public static func userfaultfd(flags: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: Int32(try check { mitosis_syscall6(MITOSIS_SYS_userfaultfd, Int(flags), 0, 0, 0, 0, 0) }))
    }

    /// How many sockets of `family` (`AF_INET` with `IPPROTO_TCP`, or `AF_UNIX`) a
    /// `NETLINK_SOCK_DIAG` dump lists in this network namespace. The corresponding system calls
    /// are `socket(AF_NETLINK)`, `send` and `recv`.
    public static func sockDiagCount(family: Int32, protocol: Int32 = 0) throws(Errno) -> Int {
        let result = mitosis_probe_sock_diag(family, `protocol`)
        if result < 0 { throw Errno(rawValue: -result) }
        return Int(result)
    }
}
