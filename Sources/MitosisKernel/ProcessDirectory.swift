import Glibc
import Synchronization
import SystemPackage

/// A process pinned by two descriptors: a pidfd and its open `/proc/PID` directory.
///
/// Both refer to the process as it was when they were opened, not to whatever holds its pid
/// later: reads relative to the directory fail once that process has exited, even if the pid has
/// been reused since, and the pidfd turns readable when it exits.
///
/// A process whose main thread has exited while other threads run is read through `/proc/TID`
/// of a live thread instead (see `Kernel.procEntry`): its leader's own entries are empty. Should
/// that thread exit too, the next read picks another live thread.
package final class ProcessDirectory: Sendable {
    package let pid: Int32
    package let pidfd: FileDescriptor
    /// `/proc/PID` itself: it pins the process's identity (and lists its threads) even when the
    /// entry read is another thread's.
    private let leader: FileDescriptor
    /// The `/proc` entry reads go through, and its id: `leader` and `pid`, or a live thread's.
    private let current: Mutex<(directory: FileDescriptor, entry: Int32)>

    /// Opens `/proc/PID` and a pidfd for `pid`, in that order. Should the pid be reused between the
    /// two opens, reads through the directory fail (it names the process that exited), so a
    /// caller that reads anything through it first never works on a mismatched pair.
    /// The corresponding system calls are `openat` and `pidfd_open`.
    package init(pid: Int32) throws(Errno) {
        self.pid = pid
        leader = try Kernel.openDirectory("/proc/\(pid)")
        do {
            pidfd = try Kernel.pidfdOpen(pid)
        } catch {
            Kernel.closeDescriptor(leader)
            throw error
        }
        current = Mutex((leader, pid))
        _ = repin()
    }

    deinit {
        current.withLock { if $0.directory != leader { Kernel.closeDescriptor($0.directory) } }
        Kernel.closeDescriptor(leader)
        Kernel.closeDescriptor(pidfd)
    }

    /// The directory reads go through: `/proc/PID`, or `/proc/TID` of a live thread.
    package var directory: FileDescriptor { current.withLock { $0.directory } }

    /// The id of the `/proc` entry reads go through: `pid`, or a live thread's id when the main
    /// thread has exited.
    package var entry: Int32 { current.withLock { $0.entry } }

    /// Whether the main thread has exited while other threads still run.
    package var leaderExited: Bool { entry != pid }

    /// Whether the process has exited (its pidfd is readable). The corresponding system call is `poll`.
    package var hasExited: Bool {
        var entry = pollfd(fd: pidfd.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, 0) > 0
    }

    /// The bytes of `/proc/PID/<name>`. The corresponding system calls are `openat` and `read`.
    package func read(_ name: String, limit: Int = 64 << 20) throws(Errno) -> [UInt8] {
        try retrying { directory throws(Errno) in try Kernel.readFileAt(directory, name, limit: limit) }
    }

    /// The target of the link `/proc/PID/<name>`. The corresponding system call is `readlinkat`.
    package func readLink(_ name: String) throws(Errno) -> String {
        try retrying { directory throws(Errno) in try Kernel.readLinkAt(directory, name) }
    }

    /// Opens the directory `/proc/PID/<name>`. The corresponding system call is `openat`.
    package func openDirectory(_ name: String) throws(Errno) -> FileDescriptor {
        try retrying { directory throws(Errno) in try Kernel.openAt(directory, name, flags: O_RDONLY | O_DIRECTORY) }
    }

    /// The names in `/proc/PID/<name>`, without `.` and `..`.
    package func list(_ name: String) throws(Errno) -> [String] {
        let fd = try openDirectory(name)
        return try Kernel.listDirectory(fd)
    }

    /// Runs `read` on the current directory; when it fails because the live thread it names has
    /// exited while the process runs on, once more on another live thread's.
    private func retrying<T>(_ read: (FileDescriptor) throws(Errno) -> T) throws(Errno) -> T {
        do {
            return try read(directory)
        } catch where (error == .noSuchProcess || error == .noSuchFileOrDirectory) && leaderExited && !hasExited && repin() {
            return try read(directory)
        }
    }

    /// Points reads at `/proc/PID`, or at a live thread's `/proc/TID` when the main thread has
    /// exited. Returns whether the directory changed.
    private func repin() -> Bool {
        let wanted = Kernel.procEntry(pid)
        guard wanted != entry else { return false }
        // The entry must be a thread of this process, not of one that took its id since.
        var opened: FileDescriptor? = leader
        if wanted != pid {
            opened = try? Kernel.openDirectory("/proc/\(wanted)")
            if let directory = opened, !Self.isThread(of: pid, directory) {
                Kernel.closeDescriptor(directory)
                opened = nil
            }
        }
        guard let opened else { return false }
        current.withLock { state in
            if state.directory != leader { Kernel.closeDescriptor(state.directory) }
            state = (opened, wanted)
        }
        return true
    }

    private static func isThread(of pid: Int32, _ directory: FileDescriptor) -> Bool {
        guard let status = try? Kernel.readFileAt(directory, "status", limit: 1 << 16) else { return false }
        return String(decoding: status, as: UTF8.self).split(separator: "\n").contains("Tgid:\t\(pid)")
    }
}
