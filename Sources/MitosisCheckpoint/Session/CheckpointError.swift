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

    public var description: String {
        switch self {
        case .noPreviousCheckpoint: return "no previous checkpoint in this session to build an incremental one on"
        case .sessionStopped: return "the tracking session was stopped"
        case .parentOfOtherProcess(let parent, let target):
            return "the parent image is of process \(parent), not \(target)"
        }
    }

    public var code: String {
        switch self {
        case .noPreviousCheckpoint: return "checkpoint.noPreviousCheckpoint"
        case .sessionStopped: return "checkpoint.sessionStopped"
        case .parentOfOtherProcess: return "checkpoint.parentOfOtherProcess"
        }
    }
}
