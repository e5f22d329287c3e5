import Glibc
import SystemPackage

/// A process pinned by two descriptors: a pidfd and its open `/proc/PID` directory.
///
/// Both refer to the process as it was when they were opened, not to whatever holds its pid
/// later: reads relative to the directory fail once that process has exited, even if the pid has
/// been reused since, and the pidfd turns readable when it exits.
package final class ProcessDirectory: Sendable {
    package let pid: Int32
    package let pidfd: FileDescriptor
    package let directory: FileDescriptor

    /// Opens `/proc/PID` and a pidfd for `pid`, in that order. Should the pid be reused between the
    /// two opens, reads through the directory fail (it names the process that exited), so a
    /// caller that reads anything through it first never works on a mismatched pair.
    /// The corresponding system calls are `openat` and `pidfd_open`.
    package init(pid: Int32) throws(Errno) {
        self.pid = pid
        directory = try Kernel.openDirectory("/proc/\(pid)")
        do {
            pidfd = try Kernel.pidfdOpen(pid)
        } catch {
            Kernel.closeDescriptor(directory)
            throw error
        }
    }

    deinit {
        Kernel.closeDescriptor(directory)
        Kernel.closeDescriptor(pidfd)
    }

    /// Whether the process has exited (its pidfd is readable). The corresponding system call is `poll`.
    package var hasExited: Bool {
        var entry = pollfd(fd: pidfd.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// The bytes of `/proc/PID/<name>`. The corresponding system calls are `openat` and `read`.
    package func read(_ name: String, limit: Int = 64 << 20) throws(Errno) -> [UInt8] {
        try Kernel.readFileAt(directory, name, limit: limit)
    }

    /// The target of the link `/proc/PID/<name>`. The corresponding system call is `readlinkat`.
    package func readLink(_ name: String) throws(Errno) -> String {
        try Kernel.readLinkAt(directory, name)
    }

    /// Opens the directory `/proc/PID/<name>`. The corresponding system call is `openat`.
    package func openDirectory(_ name: String) throws(Errno) -> FileDescriptor {
        try Kernel.openAt(directory, name, flags: O_RDONLY | O_DIRECTORY)
    }

    /// The names in `/proc/PID/<name>`, without `.` and `..`.
    package func list(_ name: String) throws(Errno) -> [String] {
        let fd = try openDirectory(name)
        return try Kernel.listDirectory(fd)
    }
}
