import MitosisModel
import MitosisTrace
/// Reads the whole `ProcessModel` of a live process from `/proc`, without stopping or tracing it.
///
/// The target is validated first (`TargetCheck`: nonexistent, zombie or kernel-thread targets
/// are refused with a typed `MitosisError`). A process that exits while it is read — or whose pid
/// is reused by another process meanwhile — gives `.noSuchProcess`, never a half-filled model.
public enum Introspector {
    /// - Parameter detailedMemory: read `/proc/PID/smaps` (sizes and VmFlags of every mapping)
    ///   rather than the cheaper `/proc/PID/maps`.
    public static func inspect(pid: Int32, detailedMemory: Bool = true) throws(MitosisError) -> ProcessModel {
        try TargetCheck.validate(pid, forTracing: false)
        let identity = try ProcessReader.identity(pid: pid)
        let maps = try ProcessReader.mappings(pid: pid, detailed: detailedMemory)
        let fds = try ProcessReader.descriptors(pid: pid)
        let model = ProcessModel(
            pid: pid, identity: identity, threads: try ProcessReader.threads(pid: pid),
            namespaces: try ProcessReader.namespaces(pid: pid), cgroups: try ProcessReader.cgroups(pid: pid),
            limits: try ProcessReader.limits(pid: pid), maps: maps, fds: fds,
            ipc: ProcessReader.ipc(pid: pid, mappings: maps, descriptors: fds))
        // The same process, still alive, after everything was read: same start time, not exited.
        let after = try ProcessReader.stat(pid)
        guard after.startTime == identity.startTime, after.state != "Z", after.state != "X" else {
            throw .noSuchProcess(pid)
        }
        return model
    }
}
