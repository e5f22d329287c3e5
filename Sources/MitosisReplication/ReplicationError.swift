import MitosisModel

/// Why replication, a standby or a promotion stopped (the `replication` domain of the
/// `MitosisFailure` family). Each case reads as one line.
public enum ReplicationError: MitosisFailure, Equatable {
    /// The standby directory cannot be served (locked, promoted, unwritable).
    case standbyDirectory(String, String)
    /// The standby refused the primary (older term, promoted directory…).
    case refused(Refusal)
    /// The peer broke the protocol.
    case protocolViolation(String)
    /// The connection ended or timed out.
    case connection(String)
    /// A standby holds a newer term: another primary exists, this one must stop.
    case newerTerm(standby: Term, ours: Term)
    /// Nothing to promote.
    case nothingCommitted(String)
    /// Promotion could not take the directory from its standby.
    case standbyStillRunning(String)
    /// A data-file log of a committed epoch does not read back.
    case damagedFileLog(String, String)
    /// A promotion step failed.
    case promotion(String)
    /// A checkpoint that cannot be restored: never sent as an epoch.
    case notRestorable(String)

    public var description: String {
        switch self {
        case .standbyDirectory(let path, let why): "standby directory \(path): \(why)"
        case .refused(let refusal): "the standby refused: \(refusal)"
        case .protocolViolation(let why): "protocol violation: \(why)"
        case .connection(let why): "connection: \(why)"
        case .newerTerm(let standby, let ours): "the standby has seen term \(standby), newer than ours (\(ours)): another primary exists"
        case .nothingCommitted(let path): "\(path) holds no committed epoch"
        case .standbyStillRunning(let why): why
        case .damagedFileLog(let path, let why): "\(path): \(why)"
        case .promotion(let why): why
        case .notRestorable(let why): why
        }
    }
}
