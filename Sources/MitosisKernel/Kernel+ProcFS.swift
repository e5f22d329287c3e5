import CMitosis
import SystemPackage

extension Kernel {
    /// The magic number of the filesystem holding `path` (`statfs.f_type`), following symbolic
    /// links — through `/proc/PID/fd/N` it names the filesystem of an open file.
    /// The corresponding system call is `statfs`.
    package static func fileSystemType(_ path: String) throws(Errno) -> Int {
        var type = 0
        try check { mitosis_statfs_type(path, &type) }
        return type
    }

    /// `MQUEUE_MAGIC`: the filesystem of POSIX message queues.
    package static let messageQueueFileSystem = 0x1980_0202
}

extension Kernel {
    /// The pid of the last process that operated on semaphore `index` of SysV set `semid`
    /// (0 when none has). The corresponding system call is `semctl` with `GETPID`.
    package static func semaphoreLastPid(semid: Int32, index: Int32) throws(Errno) -> Int32 {
        try check { mitosis_semctl_getpid(semid, index) }
    }
}
