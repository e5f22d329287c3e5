/// The leader key as read from etcd.
public struct LeaderKey: Sendable, Equatable {
    public let node: String
    /// The key's create revision: the term. Every new holder gets a larger one.
    public let term: Int64
    public let lease: Int64

    public init(node: String, term: Int64, lease: Int64) {
        self.node = node
        self.term = term
        self.lease = lease
    }
}

/// One read of a service's keys at one etcd revision.
public struct ClusterView: Sendable, Equatable {
    public var revision: Int64
    public var leader: LeaderKey?
    /// The members whose record decoded.
    public var members: [MemberRecord]
    /// Member keys whose value is not a record: key → why. They take no part in elections.
    public var invalid: [String: String]

    public init(revision: Int64, leader: LeaderKey?, members: [MemberRecord], invalid: [String: String] = [:]) {
        self.revision = revision
        self.leader = leader
        self.members = members
        self.invalid = invalid
    }
}

/// The timings of one cluster, and the rule that ties them together (Docs/cluster.md).
public struct ElectionTimings: Sendable, Equatable {
    /// The TTL of every node's lease: the leader key vanishes this long (plus etcd's expiry
    /// scan, ≤ 500 ms) after the primary's last keepalive reached etcd.
    public var leaseTTL: Duration
    /// How often a node renews its lease and re-reads the service's keys.
    public var keepaliveInterval: Duration
    /// The bound of one etcd call on one endpoint.
    public var requestTimeout: Duration
    /// A primary fences this long before its lease deadline: time for SIGSTOP and dropping
    /// the address, plus clock-rate error.
    public var fenceMargin: Duration

    public init(leaseTTL: Duration = .seconds(1), keepaliveInterval: Duration = .milliseconds(200),
                requestTimeout: Duration = .milliseconds(150), fenceMargin: Duration = .milliseconds(200)) {
        self.leaseTTL = leaseTTL
        self.keepaliveInterval = keepaliveInterval
        self.requestTimeout = requestTimeout
        self.fenceMargin = fenceMargin
    }

    /// Why these timings are unsafe or useless, or nil. The rule: a keepalive is attempted at
    /// least twice (each try bounded by the request timeout) before the fence point, so one lost
    /// request never fences a healthy primary; and the lease is whole seconds (etcd's unit).
    public var problem: String? {
        let (seconds, attoseconds) = leaseTTL.components
        if attoseconds != 0 || seconds < 1 || seconds > 60 { return "lease TTL must be whole seconds in 1...60" }
        if fenceMargin < .milliseconds(50) { return "fence margin under 50 ms" }
        if requestTimeout < .milliseconds(20) || keepaliveInterval < .milliseconds(20) { return "request timeout or keepalive interval under 20 ms" }
        if requestTimeout > keepaliveInterval { return "request timeout longer than the keepalive interval" }
        if (keepaliveInterval + requestTimeout) * 2 + fenceMargin > leaseTTL {
            return "2 × (keepalive interval + request timeout) + fence margin must fit in the lease TTL"
        }
        return nil
    }
}

/// The election and fencing rules of one node, as a value: the daemon feeds it what etcd says
/// and what the clock says, and does what it decides. No I/O here, so every rule is tested
/// by feeding it views.
public struct Election: Sendable, Equatable {
    public enum Role: Sendable, Equatable {
        /// Standby (or waiting for a leader).
        case follower
        /// Holds the leader key at `term`.
        case primary(term: Int64)
        /// Was primary at `term` and stopped its service; rejoins as a follower with a new lease.
        case fenced(term: Int64)
    }

    public enum Decision: Sendable, Equatable {
        case none
        /// Follow this leader (a new leader or a new term): start receiving its epochs.
        case follow(LeaderKey)
        /// The leader key is absent and this node is first: compare-and-swap it now.
        case campaign
        /// Not now: decide again at `until` (nil: at the next change), for `reason`.
        case wait(until: ContinuousClock.Instant?, reason: String)
        /// Stop the service now (SIGSTOP, drop the address), for `reason`.
        case fence(reason: String)
    }

    public let node: String
    public let timings: ElectionTimings
    public private(set) var role: Role = .follower
    /// No earlier than this, etcd may expire this node's lease: the send time of the last
    /// successful grant or keepalive plus the TTL.
    public private(set) var leaseDeadline: ContinuousClock.Instant?
    /// The leader this node follows.
    public private(set) var following: LeaderKey?
    /// When this node first saw the leader key absent (reset when a leader appears): the start
    /// of the detection-to-election interval in logs.
    public private(set) var leaderAbsentSince: ContinuousClock.Instant?

    /// Ready standbys last seen in a view, with when: one whose record vanishes (a lease that
    /// lapsed for a moment, on a loaded host or just after etcd regained quorum) is still
    /// deferred to for one lease TTL, time for it to take a new lease and publish again.
    private var recentStandbys: [String: SeenMember] = [:]
    /// When this node last decided on a view, and until when it may not campaign: a node that
    /// read no view for longer than a lease TTL forgot who was ahead of it (`recentStandbys`),
    /// and members whose leases lapsed meanwhile need one TTL to publish again.
    private var lastView: ContinuousClock.Instant?
    public private(set) var settlingUntil: ContinuousClock.Instant?

    private struct SeenMember: Sendable, Equatable {
        let record: MemberRecord
        let at: ContinuousClock.Instant
    }

    public init(node: String, timings: ElectionTimings) {
        self.node = node
        self.timings = timings
    }

    /// A grant or keepalive succeeded; its request was sent at `sentAt`.
    public mutating func renewed(sentAt: ContinuousClock.Instant, ttlSeconds: Int64) {
        let deadline = sentAt + .seconds(ttlSeconds)
        if leaseDeadline.map({ deadline > $0 }) ?? true { leaseDeadline = deadline }
    }

    /// When a primary must have fenced itself.
    public var fencePoint: ContinuousClock.Instant? { leaseDeadline.map { $0 - timings.fenceMargin } }

    /// Whether a primary must fence now: no lease known, or the fence point passed.
    public func fenceDue(at now: ContinuousClock.Instant) -> Bool {
        guard let fencePoint else { return true }
        return now >= fencePoint
    }

    /// This node's compare-and-swap of the leader key succeeded: it is primary at `term`.
    public mutating func won(term: Int64) {
        role = .primary(term: term)
        following = nil
        leaderAbsentSince = nil
    }

    /// This node stopped its service (after a `.fence` decision).
    public mutating func fenced() {
        if case .primary(let term) = role { role = .fenced(term: term) }
    }

    /// A fenced node took a new lease and discarded its old service: it is a follower again.
    public mutating func rejoined(sentAt: ContinuousClock.Instant, ttlSeconds: Int64) {
        role = .follower
        following = nil
        leaderAbsentSince = nil
        leaseDeadline = nil
        renewed(sentAt: sentAt, ttlSeconds: ttlSeconds)
    }

    /// Checked between views, on the clock alone: a primary whose fence point passed fences,
    /// whether or not etcd can be reached.
    public mutating func tick(now: ContinuousClock.Instant) -> Decision {
        guard case .primary = role, fenceDue(at: now) else { return .none }
        fenced()
        return .fence(reason: "no keepalive answered for \(leaseDeadline.map { (now - ($0 - timings.leaseTTL)).clusterText } ?? "ever") (counted from its send time): the lease deadline is \(timings.fenceMargin.clusterText) away or less")
    }

    /// What to do given `view` (a fresh read of the service's keys) and this node's own record `me`.
    public mutating func decide(view: ClusterView, me: MemberRecord, now: ContinuousClock.Instant) -> Decision {
        if let lastView, now - lastView > timings.leaseTTL { settlingUntil = now + timings.leaseTTL }
        lastView = now
        switch role {
        case .fenced:
            return .none
        case .primary(let term):
            if case .fence(let reason) = tick(now: now) { return .fence(reason: reason) }
            guard let leader = view.leader, leader.node == node, leader.term == term else {
                fenced()
                let holder = view.leader.map { "\($0.node) holds it at term \($0.term)" } ?? "it is absent"
                return .fence(reason: "lost the leader key of term \(term): \(holder)")
            }
            return .none
        case .follower:
            for member in view.members where member.node != node {
                if member.ready && member.role != .primary {
                    recentStandbys[member.node] = SeenMember(record: member, at: now)
                } else {
                    recentStandbys[member.node] = nil
                }
            }
            recentStandbys = recentStandbys.filter { now - $0.value.at <= timings.leaseTTL }
            if let leader = view.leader {
                leaderAbsentSince = nil
                if leader.node.isEmpty {
                    return .wait(until: nil, reason: "the leader key holds no valid node name (lease \(leader.lease)); waiting for it to go")
                }
                if leader.node == node {
                    // A key of an earlier run of this node (its old lease): it expires on its own.
                    return .wait(until: nil, reason: "the leader key names this node from an earlier run (lease \(leader.lease)); waiting for it to expire")
                }
                guard following != leader else { return .none }
                following = leader
                return .follow(leader)
            }
            if leaderAbsentSince == nil { leaderAbsentSince = now }
            guard me.ready else {
                return .wait(until: nil, reason: "no leader, and this node is not ready (\(me.reason ?? "no reason given"))")
            }
            let candidates = (view.members.filter { $0.ready && $0.node != node } + [me]).sorted(by: MemberRecord.precedes)
            let rank = candidates.firstIndex { $0.node == node } ?? 0
            if rank > 0 {
                // A live, ready member ahead is the one to win: defer until it takes the key, or
                // its record vanishes (its lease expired) or says not ready (its promotion failed).
                let ahead = candidates[0]
                return .wait(until: nil, reason: "\(ahead.node) is ahead (term \(ahead.term) epoch \(ahead.epoch), this node \(me.term)/\(me.epoch)); \(rank) place(s) behind")
            }
            if let settlingUntil, now < settlingUntil {
                return .wait(until: settlingUntil, reason: "the service's keys were out of reach for more than a lease TTL: waiting one TTL (until \((settlingUntil - now).clusterText) from now) for members whose leases lapsed meanwhile to publish again")
            }
            let live = Set(view.members.map(\.node))
            let vanished = recentStandbys.values.filter { !live.contains($0.record.node) && MemberRecord.precedes($0.record, me) }
            if let ahead = vanished.min(by: { MemberRecord.precedes($0.record, $1.record) }) {
                return .wait(until: ahead.at + timings.leaseTTL,
                             reason: "\(ahead.record.node) was ahead (term \(ahead.record.term) epoch \(ahead.record.epoch)) and its record vanished \((now - ahead.at).clusterText) ago; waiting up to one lease TTL for it to come back")
            }
            return .campaign
        }
    }
}

extension Duration {
    /// "1234 ms": how the cluster's logs and status print durations.
    public var clusterText: String {
        let (seconds, attoseconds) = components
        return "\(seconds * 1000 + attoseconds / 1_000_000_000_000_000) ms"
    }
}
