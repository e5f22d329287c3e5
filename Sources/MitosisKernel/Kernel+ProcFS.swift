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

    /// `root` and every process below it, found through `/proc/PID/task/TID/children`.
    package static func processTree(root: Int32) -> [Int32] {
        var result: [Int32] = []
        var queue = [root]
        while let next = queue.popLast() {
            result.append(next)
            let tids = (try? Kernel.listDirectory("/proc/\(next)/task")) ?? []
            for tid in tids {
                guard let text = try? Kernel.readFile("/proc/\(next)/task/\(tid)/children") else { continue }
                queue += String(decoding: text, as: UTF8.self).split(separator: " ").compactMap { Int32($0) }
            }
        }
        return result
    }
}
