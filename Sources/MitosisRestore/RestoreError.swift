import MitosisModel

/// One reason an image cannot be restored here, named by what it concerns.
public struct RestoreRefusal: Equatable, Sendable, Codable, CustomStringConvertible {
    /// What is refused: `image`, `fd 4`, `mapping 0x7f…-0x7f… /path`, `thread 123`…
    public var subject: String
    public var reason: String

    public init(_ subject: String, _ reason: String) {
        self.subject = subject
        self.reason = reason
    }

    public var description: String { "\(subject): \(reason)" }
}

/// Why a restore did not happen. Each case reads as one line; whatever failed, no process is left.
public enum RestoreError: MitosisFailure, Equatable {
    /// The image holds something this Mitosis cannot restore (see `Restorer.refusals`).
    case refused(image: String, [RestoreRefusal])
    /// Another process holds the pid the image's process had.
    case pidTaken(Int32, holder: String)
    /// The pid is above this system's `kernel.pid_max`.
    case pidOutOfRange(Int32)
    /// A step of the restore failed; the half-built process was killed.
    case failed(step: String, detail: String)
    /// The network namespace to restore into (`--netns`) does not exist, or is not one.
    case noNetworkNamespace(String, detail: String)

    public var description: String {
        switch self {
        case .refused(let image, let refusals):
            let more = refusals.count > 1 ? " (and \(refusals.count - 1) more; see restore --check)" : ""
            return "\(image) cannot be restored here: \(refusals.first.map(\.description) ?? "no reason")\(more)"
        case .pidTaken(let pid, let holder):
            return "pid \(pid) is taken by \(holder); end it first, or restore into a new pid namespace (--pidns)"
        case .pidOutOfRange(let pid): return "pid \(pid) is above this system's kernel.pid_max"
        case .failed(let step, let detail): return "restore failed while \(step): \(detail); the half-built process was killed"
        case .noNetworkNamespace(let name, let detail): return "network namespace \(name) does not exist: \(detail); nothing was restored"
        }
    }
}

/// A failed step inside the husk, carried up to become `RestoreError.failed`.
struct StepFailure: Error {
    var step: String
    var detail: String
}

extension RestoreError {
    /// `error` as a restore reports it: a husk's failed step becomes `failed`, any other error
    /// a failure of `restoring`.
    static func from(_ error: any Error) -> any Error {
        if let failure = error as? StepFailure { return RestoreError.failed(step: failure.step, detail: failure.detail) }
        if error is RestoreError { return error }
        return RestoreError.failed(step: "restoring", detail: "\(error)")
    }
}

/// A prepared husk's life (`PreparedProcess`, `PreparedTree`): one call at a time, none once
/// it is gone (finished, discarded, or killed by a failure).
struct PreparedState {
    enum Phase { case ready, busy, gone }
    var phase = Phase.ready

    mutating func begin(_ call: String, of what: String) throws {
        switch phase {
        case .ready: phase = .busy
        case .busy: throw RestoreError.failed(step: call, detail: "another call on \(what) is running")
        case .gone: throw RestoreError.failed(step: call, detail: "\(what) no longer exists")
        }
    }
}
