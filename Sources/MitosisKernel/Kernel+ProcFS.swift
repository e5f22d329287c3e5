import CMitosis
import MitosisModel
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

extension Kernel {
    /// The id under which `/proc` shows the address space, descriptors, links and namespaces of
    /// process `pid`: `pid` itself, or — when its main thread has exited while other threads run —
    /// the id of a live thread. Such a thread-group leader stays a zombie until the last thread
    /// exits, and its own entries are empty (`maps`, `fd`) or fail (`exe`, `ns/net`, `mem` reads
    /// nothing); `/proc/TID` of any other thread shows the whole process.
    package static func procEntry(_ pid: Int32) -> Int32 {
        guard isExited("/proc/\(pid)/stat") else { return pid }
        return liveThread(of: pid) ?? pid
    }

    /// A thread of `pid` that has not exited (the lowest such tid), or nil when every thread has.
    package static func liveThread(of pid: Int32) -> Int32? {
        let tids = ((try? listDirectory("/proc/\(pid)/task")) ?? []).compactMap { Int32($0) }.sorted()
        return tids.first { !isExited("/proc/\(pid)/task/\($0)/stat") }
    }

    /// Whether the task whose `stat` file is `path` has exited (state Z or X), or is gone.
    private static func isExited(_ path: String) -> Bool {
        guard let text = try? readFile(path), let stat = ProcStat(parsing: String(decoding: text, as: UTF8.self)) else { return true }
        return stat.state == "Z" || stat.state == "X"
    }
}
