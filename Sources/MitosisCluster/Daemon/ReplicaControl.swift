/// What the cluster daemon asks of the replication layer on this node: the seam between
/// failover (this target) and hot standby (protect / standby / promote).
///
/// The daemon calls these from one task at a time. `fence` must be fast and must not fail:
/// it runs at the lease deadline, with or without etcd.
public protocol ReplicaControl: Sendable {
    /// What this node holds now: its newest committed epoch, that epoch's term, and whether a
    /// promotion here would succeed (a warm clone exists, the image passed its checks…).
    func state() async -> ReplicaState
    /// Be a standby of `leader` from `term` on: accept its epochs, refuse older terms.
    func follow(leader: String, term: Int64) async throws
    /// Bring the service to life here from the newest committed epoch (this node just took the
    /// leader key at `term`). Returns once the service runs.
    func promote(term: Int64) async throws
    /// Protect the running service onto `standbys` (called after `promote`, and again when the
    /// set of ready standbys changes).
    func protect(term: Int64, standbys: [MemberRecord]) async throws
    /// Stop the service now (SIGSTOP or freeze: nothing it says reaches a client any more).
    func fence() async
    /// Bring the fenced service back (SIGCONT): this node took the leader key again at `term`
    /// with the newest state, which is the frozen service itself (Docs/cluster.md, "A fenced
    /// primary may come back"). `protect` follows.
    func resume(term: Int64) async throws
    /// Discard the fenced service for good: this node rejoins as a standby (full resync).
    func discard() async
}

/// A node's replication state as the daemon publishes it.
public struct ReplicaState: Sendable, Equatable {
    public var term: Int64
    public var epoch: Int64
    public var ready: Bool
    public var reason: String?

    public init(term: Int64, epoch: Int64, ready: Bool, reason: String? = nil) {
        self.term = term
        self.epoch = epoch
        self.ready = ready
        self.reason = reason
    }
}

/// Takes and drops the service address on this host.
public protocol AddressControl: Sendable {
    /// Adds the address and announces it (gratuitous ARP) so that neighbours update their caches.
    func take() async throws
    /// Removes the address. Must not fail when it is already gone.
    func release() async
}
