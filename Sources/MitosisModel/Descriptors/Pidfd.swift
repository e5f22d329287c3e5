/// The process a pidfd refers to.
public struct PidfdState: Equatable, Hashable, Sendable, Codable {
    /// Its pid in the reader's pid namespace; -1 once it has exited.
    public var pid: Int32
    /// Its pid in each nested namespace, outermost first (`NSpid:`).
    public var namespacePids: [Int32]

    package init(pid: Int32, namespacePids: [Int32]) {
        self.pid = pid
        self.namespacePids = namespacePids
    }
}
