import MitosisModel

/// Turns user input into a pid that Mitosis may work on, or the typed reason it may not.
/// Every operation checks its target here first, so bad input never reaches ptrace.
public enum TargetCheck {
    /// Parses a pid given as text (`"1234"`): positive decimal only.
    public static func parsePID(_ text: String) throws(MitosisError) -> Int32 {
        guard let pid = Int32(text), pid > 0 else { throw .invalidPID(text) }
        return pid
    }

    /// Checks that `pid` names a live user-space process other than this one (see `TargetProcess`).
    /// - Parameter forTracing: also refuse a process that another tracer holds.
    public static func validate(_ pid: Int32, forTracing: Bool) throws(MitosisError) {
        _ = try TargetProcess(pid: pid, forTracing: forTracing)
    }
}
