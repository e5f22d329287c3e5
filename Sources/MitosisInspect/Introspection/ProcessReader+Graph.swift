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
                let comm = (try? Kernel.readFile("/proc/\(pid)/comm")).map { String(decoding: $0, as: UTF8.self) }.map { $0.hasSuffix("\n") ? String($0.dropLast()) : $0 } ?? "?"
                found[target] = "process \(pid) (\(comm))"
                if found.count == links.count { return found }
            }
        }
        return found
    }
}
