import SystemPackage

/// Reads one part of a live process's state from `/proc`, without stopping it. Each read is a
/// snapshot of that one file; `Introspector` combines them into a `ProcessModel`.
///
/// Errors: a process that does not exist or exits during the read throws `.noSuchProcess`; a
/// refused read throws `.permissionDenied`.
public enum ProcessReader {
    /// Every mapping of `pid`, with smaps sizes and VmFlags when `detailed` (the default);
    /// from the cheaper `/proc/PID/maps` otherwise.
    public static func mappings(pid: Int32, detailed: Bool = true) throws(MitosisError) -> [MemoryMapping] {
        ProcMaps.parse(try text(pid, detailed ? "smaps" : "maps"))
    }

    /// The text of `/proc/PID/<file>`.
    static func text(_ pid: Int32, _ file: String) throws(MitosisError) -> String {
        let path = "/proc/\(pid)/\(file)"
        do {
            return String(decoding: try Kernel.readFile(path), as: UTF8.self)
        } catch {
            throw failure(error, pid: pid, reading: path)
        }
    }

    /// Translates an errno from reading `path` of `pid` into the error a user can act on.
    static func failure(_ error: Errno, pid: Int32, reading path: String) -> MitosisError {
        switch error {
        case .noSuchFileOrDirectory, .noSuchProcess: return .noSuchProcess(pid)
        case .permissionDenied, .notPermitted: return .permissionDenied(pid, operation: "read \(path) of")
        default: return .system(operation: "reading \(path)", errno: error)
        }
    }
}
