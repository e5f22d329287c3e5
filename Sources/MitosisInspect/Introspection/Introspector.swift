import MitosisModel
import MitosisTrace
/// Reads the whole `ProcessModel` of a live process from `/proc`, without stopping or tracing it.
///
/// The target is validated first (`TargetProcess`: nonexistent, zombie or kernel-thread targets
/// are refused with a typed `MitosisError`). A process that exits while it is read gives
/// `.noSuchProcess` (or `.pidReused`), never a half-filled model.
public enum Introspector {
    /// - Parameter detailedMemory: read `/proc/PID/smaps` (sizes and VmFlags of every mapping)
    ///   rather than the cheaper `/proc/PID/maps`.
    public static func inspect(pid: Int32, detailedMemory: Bool = true) throws(MitosisError) -> ProcessModel {
        try inspect(TargetProcess(pid: pid), detailedMemory: detailedMemory)
    }

    public static func inspect(_ target: TargetProcess, detailedMemory: Bool = true) throws(MitosisError) -> ProcessModel {
        let identity = try ProcessReader.identity(target)
        let maps = try ProcessReader.mappings(target, detailed: detailedMemory)
        let fds = try ProcessReader.descriptors(target)
        let model = ProcessModel(
            pid: target.pid, identity: identity, threads: try ProcessReader.threads(target),
            namespaces: try ProcessReader.namespaces(target), cgroups: try ProcessReader.cgroups(target),
            limits: try ProcessReader.limits(target), maps: maps, fds: fds,
            ipc: ProcessReader.ipc(target, mappings: maps, descriptors: fds))
        // Still the same process, alive, after everything was read: every read went through its
        // /proc directory, so none of it came from a process that reused the pid.
        try ProcessReader.requireAlive(target)
        return model
    }
}
