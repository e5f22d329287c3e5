import Glibc
import MitosisModel
import SystemPackage

/// SysV shared memory segments of this process's IPC namespace, for a restore that must give a
/// segment back its id (a process attaches, and may keep, segments by id).
extension Kernel {
    /// Creates a segment that gets exactly `id`, with `key` (0: `IPC_PRIVATE`), `size` and the
    /// permission bits of `mode`. The id comes from `kernel.shm_next_id` (CONFIG_CHECKPOINT_RESTORE),
    /// set for this one `shmget` and put back to -1 (the kernel's own choice) at once. A segment
    /// that does not get `id` (another one was created in between) is removed again: `EEXIST`.
    /// The corresponding system call is `shmget`.
    package static func createSharedMemorySegment(id: Int32, key: Int32, size: UInt64, mode: UInt32) throws(Errno) -> Int32 {
        let next = "/proc/sys/kernel/shm_next_id"
        try writeFile(next, "\(id)")
        defer { try? writeFile(next, "-1") }
        let created = try check { shmget(key, Int(size), IPC_CREAT | IPC_EXCL | Int32(mode & 0o777)) }
        guard created == id else {
            _ = shmctl(created, IPC_RMID, nil)
            throw .fileExists
        }
        return created
    }

    /// Marks a segment for removal: it goes once no process has it attached.
    /// The corresponding system call is `shmctl(IPC_RMID)`.
    package static func removeSharedMemorySegment(_ id: Int32) throws(Errno) {
        _ = try check { shmctl(id, IPC_RMID, nil) }
    }

    /// The segments of this IPC namespace, as `/proc/sysvipc/shm` lists them.
    package static func sharedMemorySegments() throws(Errno) -> [SysVSharedMemory] {
        ProcSysvIPC.sharedMemory(String(decoding: try readFile("/proc/sysvipc/shm"), as: UTF8.self))
    }

    /// `mode`'s bit that says the segment is marked for removal (IPC_RMID while attached).
    package static let sharedMemoryDestroyed: UInt32 = 0o1000  // SHM_DEST
    /// `shmat` flags.
    package static let attachReadOnly: UInt64 = 0o10000, attachExecutable: UInt64 = 0o100000  // SHM_RDONLY, SHM_EXEC
}
