/// Why a checkpoint could not be taken. Each case reads as one line.
public enum CheckpointError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The target exited while it was being checkpointed; the image was marked incomplete.
    case targetExited(Int32)
    /// An incremental checkpoint was asked for before any full one in this session.
    case noPreviousCheckpoint
    /// The session was stopped; start a new one.
    case sessionStopped
    /// The parent image is of another process.
    case parentOfOtherProcess(parent: Int32, target: Int32)
    /// The network lock of the connections could not be kept for the restore: the process was not killed.
    case connectionsNotHeld(String)

    public var description: String {
        switch self {
        case .targetExited(let pid): return "process \(pid) exited during the checkpoint; the image is incomplete"
        case .noPreviousCheckpoint: return "no previous checkpoint in this session to build an incremental one on"
        case .sessionStopped: return "the tracking session was stopped"
        case .connectionsNotHeld(let why):
            return "the TCP connections' network lock could not be kept for the restore (\(why)); the process was not killed"
        case .parentOfOtherProcess(let parent, let target):
            return "the parent image is of process \(parent), not \(target)"
        }
    }
}
