import CMitosis
import Glibc
import MitosisModel
import SystemPackage

/// File handles (`name_to_handle_at`'s stable names for inodes), which is how inotify reports
/// what a watch is on: by inode, with a handle, never by path.
extension Kernel {
    /// The path, in this process's view of the file system, of the inode that the file handle
    /// (`type`, `bytes`: the `fhandle-type` and `f_handle` of an fdinfo line) names on the mount
    /// `mountPoint` of process `pid`. The handle is opened through the mount as that process sees
    /// it (`/proc/PID/root`), so its own mount namespace is honoured; the path is then read back
    /// from `/proc/self/fd`. Needs CAP_DAC_READ_SEARCH, and a mount descriptor opened for reading
    /// (an `O_PATH` one is refused with `EBADF`).
    /// The corresponding system call is `open_by_handle_at`.
    package static func pathOfHandle(pid: Int32, mountPoint: String, type: Int32, bytes: [UInt8]) throws(Errno) -> String {
        guard !bytes.isEmpty, bytes.count <= 128 /* MAX_HANDLE_SZ */ else { throw .invalidArgument }
        let mount = try check { open("/proc/\(pid)/root\(mountPoint)", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { close(mount) }
        // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
        var handle = [UInt8](repeating: 0, count: 8 + bytes.count)
        withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { handle.replaceSubrange(0..<4, with: $0) }
        withUnsafeBytes(of: type.littleEndian) { handle.replaceSubrange(4..<8, with: $0) }
        handle.replaceSubrange(8..., with: bytes)
        let fd = try check {
            handle.withUnsafeMutableBytes { raw in
                Int32(mitosis_syscall6(304 /* open_by_handle_at */, Int(mount), Int(bitPattern: raw.baseAddress), Int(Linux.O_PATH | O_CLOEXEC), 0, 0, 0))
            }
        }
        defer { close(fd) }
        return try readLink("/proc/self/fd/\(fd)")
    }
}
