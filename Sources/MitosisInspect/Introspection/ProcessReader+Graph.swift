import MitosisKernel
import MitosisModel
import MitosisTrace
/// The reads the resource graph needs beyond one process's own state.
extension ProcessReader {
    /// The mounts `pid` sees; empty when unreadable.
    public static func mounts(_ target: TargetProcess) -> [MountInfo] {
        (try? target.text("mountinfo")).map(ProcMountinfo.parse) ?? []
    }

    /// Which process outside `excluding` holds each of `links` (descriptor link targets such as
    /// `pipe:[123]` or `socket:[456]`), as `process PID (comm)`: one scan of every other
    /// process's `/proc/PID/fd` links, stopping once all are found. Links nobody else holds are absent.
    public static func holders(of links: Set<String>, excluding: Set<Int32>) -> [String: String] {
        var found: [String: String] = [:]
        let pids = ((try? Kernel.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.sorted()
        for pid in pids where !excluding.contains(pid) {
            guard var fds = try? Kernel.listDirectory("/proc/\(pid)/fd") else { continue }
            var entry = pid
            if fds.isEmpty {  // no descriptors, or a main thread that exited: look through a live thread
                entry = Kernel.procEntry(pid)
                if entry != pid { fds = (try? Kernel.listDirectory("/proc/\(entry)/fd")) ?? [] }
            }
            for fd in fds {
                guard let target = try? Kernel.readLink("/proc/\(entry)/fd/\(fd)"), links.contains(target), found[target] == nil
                else { continue }
                found[target] = describe(pid)
                if found.count == links.count { return found }
            }
        }
        return found
    }

    /// Which process outside `excluding` attaches each of the SysV segments `shmids`, as
    /// `process PID (comm)`: one scan of the other processes' `/proc/PID/maps`, stopping once all
    /// are found. A shmid names a segment only within one IPC namespace: call it for segments of
    /// Mitosis's own (`sharedMemorySegments`).
    public static func sharedMemoryAttachers(_ shmids: Set<Int32>, excluding: Set<Int32>) -> [Int32: String] {
        var found: [Int32: String] = [:]
        let pids = ((try? Kernel.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.sorted()
        for pid in pids where !excluding.contains(pid) {
            guard let maps = try? Kernel.readFile("/proc/\(Kernel.procEntry(pid))/maps") else { continue }
            for mapping in ProcMaps.parse(String(decoding: maps, as: UTF8.self)) where mapping.kind == .sysvSharedMemory {
                let shmid = Int32(truncatingIfNeeded: mapping.inode)
                guard shmids.contains(shmid), found[shmid] == nil else { continue }
                found[shmid] = describe(pid)
                if found.count == shmids.count { return found }
            }
        }
        return found
    }

    /// `process PID (comm)`.
    private static func describe(_ pid: Int32) -> String {
        let comm = (try? Kernel.readFile("/proc/\(pid)/comm")).map { String(decoding: $0, as: UTF8.self) }.map { $0.hasSuffix("\n") ? String($0.dropLast()) : $0 } ?? "?"
        return "process \(pid) (\(comm))"
    }
}
