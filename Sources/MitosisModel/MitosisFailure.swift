/// Every error Mitosis throws belongs to this one family, whichever layer throws it: the
/// target's (`MitosisError`), a checkpoint session's (`CheckpointError`), an image's
/// (`ImageError`), a restore's (`RestoreError`) and a kernel probe's (`ProbeFailure`).
///
/// Each failure has one spelling: a `summary` line that says what happened and what to do (the
/// CLI prints it after `mitosis: `), and a `code` that scripts and tests can match on, which
/// rewording the summary never changes. A failure is thrown by the layer that understands it
/// and passed up unchanged; the target exiting mid-operation, for instance, is always
/// `MitosisError.targetExited`, whichever layer noticed.
public protocol MitosisFailure: Error, Sendable, CustomStringConvertible {
    /// What the failure concerns: `target`, `checkpoint`, `image`, `restore` or `probe`.
    static var domain: String { get }
    /// `domain.case`, e.g. `target.targetExited`, `image.checksumMismatch`: stable while the
    /// case keeps its name.
    var code: String { get }
    /// The one line to show a user.
    var summary: String { get }
}

extension MitosisFailure {
    /// The type's name without `Error`, lowercased: `RestoreError` is `restore`.
    public static var domain: String {
        let name = String(describing: Self.self)
        return (name.hasSuffix("Error") ? String(name.dropLast(5)) : name).lowercased()
    }

    /// The domain and the enum case's name; a case without values must be named by its type
    /// (see `CheckpointError.code`), as reflection cannot see it.
    public var code: String {
        "\(Self.domain).\(Mirror(reflecting: self).children.first?.label ?? "failure")"
    }

    public var summary: String { description }
}
