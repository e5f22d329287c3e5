import MitosisModel

/// Why a checkpoint session could not do what it was asked (the `checkpoint` domain of the
/// `MitosisFailure` family; a target that exits is `MitosisError.targetExited`). Each case
/// reads as one line.
public enum CheckpointError: MitosisFailure, Equatable {
    /// An incremental checkpoint was asked for before any full one in this session.
    case noPreviousCheckpoint
    /// The session was stopped; start a new one.
    case sessionStopped
    /// The parent image is of another process.
    case parentOfOtherProcess(parent: Int32, target: Int32)
    /// The network lock of the killed process's connections could not be kept for the restore
    /// (`dump --kill`): its clients will see a reset once Mitosis exits.
    case connectionsNotHeld(String)
    /// A tree dump (`dump --tree`) found the tree changed under it: a member exited or a new
    /// process appeared. The partial image was removed and every member left running.
    case treeChanged(root: Int32, String)

    public var description: String {
        switch self {
        case .noPreviousCheckpoint: return "no previous checkpoint in this session to build an incremental one on"
        case .sessionStopped: return "the tracking session was stopped"
        case .connectionsNotHeld(let why):
            return "the process was killed, but its TCP connections' network lock could not be kept for the restore (\(why)): its clients will see a reset"
        case .parentOfOtherProcess(let parent, let target):
            return "the parent image is of process \(parent), not \(target)"
        case .treeChanged(let root, let what):
            return "the process tree of \(root) changed during the dump (\(what)); no image was written and every process was left running"
        }
    }

    public var code: String {
        switch self {
        case .noPreviousCheckpoint: return "checkpoint.noPreviousCheckpoint"
        case .sessionStopped: return "checkpoint.sessionStopped"
        case .parentOfOtherProcess: return "checkpoint.parentOfOtherProcess"
        case .connectionsNotHeld: return "checkpoint.connectionsNotHeld"
        case .treeChanged: return "checkpoint.treeChanged"
        }
    }
}
