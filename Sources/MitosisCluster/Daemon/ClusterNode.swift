import Logging

/// Something that happened to a node, with when (for logs, status and tests).
public struct NodeEvent: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case following(leader: String, term: Int64)
        /// Took the leader key at `term`; `detection` is how long the key was seen absent first.
        case tookLeaderKey(term: Int64, afterAbsence: Duration?)
        case promoted(term: Int64)
        case addressTaken(term: Int64)
        case fenced(term: Int64, reason: String)
        case rejoined(lease: Int64)
    }

    public let at: ContinuousClock.Instant
    public let kind: Kind
}

/// One node of a protected service: its lease, its member record, the election and fencing
/// rules (`Election`), and what it asks of the replication layer (`ReplicaControl`) and of
/// the host (`AddressControl`).
///
/// `run()` holds four loops: renewing the lease, watching the service's keys, re-reading them
/// every keepalive interval (a watch on a partitioned member is silent), and the fence clock,
/// which stops a primary's service at its lease deadline whatever etcd says or doesn't.
public actor ClusterNode {
    public nonisolated let keys: ClusterKeys
    public nonisolated let node: String
    public nonisolated let replicationAddress: String
    public nonisolated let timings: ElectionTimings
    private let etcd: EtcdClient
    private let replica: any ReplicaControl
    private let address: (any AddressControl)?
    private let logger: Logger

    public private(set) var election: Election
    public private(set) var history: [NodeEvent] = []
    /// The lease this node's keys hang on (0: none yet).
    public private(set) var lease: Int64 = 0
    private var published: MemberRecord?
    private var protecting: [String]?
    private var evaluating = false
    private var evaluateAgain = false
    private var lastWait: String?
    private var etcdFailing = false
    /// Why this node's last promotion failed: it stays out of elections until restarted, so a
    /// misconfigured service does not take the key again and again ahead of healthy standbys.
    private var promotionFailure: String?
    /// The term at which this node's service was fenced, while the service is still held,
    /// stopped: the node may resume it if it wins the key again before another node holds it.
    private var frozenTerm: Int64?

    public init(service: String, node: String, replicationAddress: String, timings: ElectionTimings,
                etcd: EtcdClient, replica: any ReplicaControl, address: (any AddressControl)?, logger: Logger) {
        keys = ClusterKeys(service: service)
        self.node = node
        self.replicationAddress = replicationAddress
        self.timings = timings
        self.etcd = etcd
        self.replica = replica
        self.address = address
        var logger = logger
        logger[metadataKey: "node"] = "\(node)"
        self.logger = logger
        election = Election(node: node, timings: timings)
    }

    public var role: Election.Role { election.role }

    /// Runs the node until the task is cancelled. On cancellation (a graceful stop) a primary
    /// stops its service and drops the address, then every node revokes its lease, so that a
    /// standby takes over at once instead of after the TTL.
    public func run() async {
        logger.info("starting: service \(keys.service), lease TTL \(timings.leaseTTL.clusterText), keepalive every \(timings.keepaliveInterval.clusterText), request timeout \(timings.requestTimeout.clusterText), fence margin \(timings.fenceMargin.clusterText)")
        // A node starts as a follower: an address left on this host by a run that was killed
        // (its processes died, the host's kernel did not) would answer ARP beside the primary's.
        await address?.release()
        while lease == 0 && !Task.isCancelled {
            if !(await takeLease()) { try? await Task.sleep(for: timings.keepaliveInterval) }
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.loop(every: self.timings.keepaliveInterval) { await $0.renew() } }
            group.addTask { await self.loop(every: self.timings.keepaliveInterval) { await $0.evaluate() } }
            group.addTask { await self.watchKeys() }
            group.addTask { await self.fenceClock() }
        }
        // Not cancelled itself: the stop must reach etcd.
        await Task { await self.stop() }.value
    }

    private func loop(every interval: Duration, _ body: @Sendable (ClusterNode) async -> Void) async {
        while !Task.isCancelled {
            await body(self)
            try? await Task.sleep(for: interval)
        }
    }

    // MARK: Lease

    /// Grants a new lease; false when etcd did not answer.
    private func takeLease() async -> Bool {
        do {
            let granted = try await etcd.grant(ttlSeconds: Int64(timings.leaseTTL.components.seconds))
            lease = granted.id
            published = nil
            election.renewed(sentAt: granted.sentAt, ttlSeconds: granted.ttlSeconds)
            logger.info("lease \(granted.id) granted (TTL \(granted.ttlSeconds) s)")
            return true
        } catch {
            noteEtcdFailure("lease grant", error)
            return false
        }
    }

    private func renew() async {
        let current = lease
        guard current != 0 else { return }
        if case .fenced = election.role { return }
        do {
            let renewal = try await etcd.keepAliveConfirmed(current, timeout: timings.requestTimeout)
            guard current == lease else { return }
            election.renewed(sentAt: renewal.sentAt, ttlSeconds: renewal.ttlSeconds)
            noteEtcdAnswered()
        } catch EtcdError.leaseExpired {
            guard current == lease else { return }
            logger.warning("lease \(current) expired")
            if case .primary = election.role {
                await fence(reason: "etcd says lease \(current) expired")
            } else {
                lease = 0
                _ = await takeLease()
            }
        } catch {
            noteEtcdFailure("keepalive", error)
        }
    }

    private func noteEtcdFailure(_ what: String, _ error: any Error) {
        guard !etcdFailing else { return }
        etcdFailing = true
        logger.warning("etcd: \(what) failed: \(error)")
    }

    private func noteEtcdAnswered() {
        guard etcdFailing else { return }
        etcdFailing = false
        logger.info("etcd answers again")
    }

    // MARK: Fencing

    /// Wakes at the fence point (or every 50 ms) and fences a primary whose lease deadline is near.
    private func fenceClock() async {
        while !Task.isCancelled {
            let now = ContinuousClock.now
            if case .fence(let reason) = election.tick(now: now) {
                await fenced(reason: reason)
            }
            var wake = now + .milliseconds(50)
            if case .primary = election.role, let point = election.fencePoint, point < wake { wake = point }
            try? await Task.sleep(until: wake, clock: .continuous)
        }
    }

    private func fence(reason: String) async {
        guard case .primary = election.role else { return }
        election.fenced()
        await fenced(reason: reason)
    }

    /// The role is already `.fenced`: stop the service and drop the address.
    private func fenced(reason: String) async {
        guard case .fenced(let term) = election.role else { return }
        await replica.fence()
        await address?.release()
        frozenTerm = term
        record(.fenced(term: term, reason: reason))
        logger.error("FENCED (term \(term)): \(reason); service stopped, address dropped")
    }

    /// A fenced node comes back as a follower with a new lease, once etcd answers. If another
    /// node holds the leader key, the frozen service is discarded (a full resync follows).
    /// Otherwise the node keeps it and publishes itself as a fenced member, ready: it holds the
    /// newest state of its term, and resumes it if it wins the key (the way Patroni lets a
    /// demoted leader with the most recent WAL win the race again). `keepService: false` (a
    /// failed promotion or address) always discards.
    private func rejoin(keepService: Bool = true) async {
        guard case .fenced = election.role else { return }
        let old = lease
        do {
            let granted = try await etcd.grant(ttlSeconds: Int64(timings.leaseTTL.components.seconds))
            var keep = keepService && frozenTerm != nil
            if keep, let holder = try await readView().leader, !(holder.node == node && holder.lease == old) {
                keep = false
            }
            lease = granted.id
            published = nil
            protecting = nil
            election.rejoined(sentAt: granted.sentAt, ttlSeconds: granted.ttlSeconds)
            if keep {
                // Published before the old lease goes (and with it the leader key, if still
                // ours): whoever then sees the key absent sees this record too, and defers.
                await publish(record(for: await replica.state()))
            } else {
                frozenTerm = nil
                await replica.discard()
            }
            if old != 0 {
                do { try await etcd.revoke(old) } catch { logger.warning("revoking the old lease \(old) failed (it expires on its own): \(error)") }
            }
            record(.rejoined(lease: granted.id))
            if keep {
                logger.notice("rejoined with lease \(granted.id); nobody else holds the leader key: the service fenced at term \(frozenTerm ?? 0) is kept, stopped, and resumed if this node wins the key again")
            } else {
                logger.info("rejoined as a follower with lease \(granted.id) (old service discarded)")
            }
        } catch {
            noteEtcdFailure("rejoin", error)
        }
    }

    // MARK: Election

    private func watchKeys() async {
        var from: Int64 = 0
        while !Task.isCancelled {
            do {
                for try await events in etcd.watch(keys.root, prefix: true, fromRevision: from) {
                    for event in events {
                        switch event {
                        case .put(let kv): from = max(from, kv.modRevision + 1)
                        case .delete(_, let revision, _): from = max(from, revision + 1)
                        }
                    }
                    await evaluate()
                }
            } catch {
                from = 0
                if !Task.isCancelled { try? await Task.sleep(for: timings.keepaliveInterval) }
            }
        }
    }

    /// Reads the service's keys and does what the election decides. One at a time: a call
    /// that arrives meanwhile makes the running one read again.
    private func evaluate() async {
        guard !evaluating else {
            evaluateAgain = true
            return
        }
        evaluating = true
        defer { evaluating = false }
        repeat {
            evaluateAgain = false
            await evaluateOnce()
        } while evaluateAgain && !Task.isCancelled
    }

    private func evaluateOnce() async {
        if case .fenced = election.role { await rejoin() }
        guard lease != 0 else { return }
        let state = await replica.state()
        let view: ClusterView
        do {
            view = try await readView()
            noteEtcdAnswered()
        } catch {
            noteEtcdFailure("read of \(keys.root)", error)
            return
        }
        for (key, why) in view.invalid.sorted(by: { $0.key < $1.key }) {
            logger.debug("ignoring \(key): \(why)")
        }
        if case .follower = election.role, let leader = view.leader, leader.node == node, leader.lease == lease {
            // Our own compare-and-swap was applied although its answer was lost.
            await becomePrimary(term: leader.term, view: view)
            return
        }
        let me = record(for: state)
        switch election.decide(view: view, me: me, now: .now) {
        case .none:
            lastWait = nil
        case .follow(let leader):
            lastWait = nil
            if let frozen = frozenTerm {
                frozenTerm = nil
                await replica.discard()
                logger.info("\(leader.node) leads at term \(leader.term): the service fenced at term \(frozen) is discarded (a full resync follows)")
            }
            logger.info("following \(leader.node) at term \(leader.term)")
            record(.following(leader: leader.node, term: leader.term))
            do { try await replica.follow(leader: leader.node, term: leader.term) } catch {
                logger.error("standby of \(leader.node) failed to start: \(error)")
            }
        case .wait(_, let reason):
            if reason != lastWait { logger.info("not campaigning: \(reason)") }
            lastWait = reason
        case .campaign:
            lastWait = nil
            await campaign(me: me)
            return
        case .fence(let reason):
            await fenced(reason: reason)
            return
        }
        if case .primary(let term) = election.role { await protect(term: term, view: view) }
        await publish(record(for: state))
    }

    private func campaign(me: MemberRecord) async {
        logger.info("leader key absent: campaigning (term \(me.term) epoch \(me.epoch))")
        do {
            let result = try await etcd.txn(compare: [.createRevision(key: keys.leader, equals: 0)],
                                            success: [.put(key: keys.leader, value: Array(node.utf8), lease: lease), .get(key: keys.leader)],
                                            failure: [.get(key: keys.leader)])
            guard case .range(let found) = result.results.last, let holder = found.first else {
                evaluateAgain = true
                return
            }
            if holder.lease == lease && holder.value == Array(node.utf8) {
                await becomePrimary(term: holder.createRevision, view: try await readView())
            } else {
                logger.info("lost the campaign: \(String(decoding: holder.value.prefix(63), as: UTF8.self)) holds the leader key")
                evaluateAgain = true
            }
        } catch {
            logger.warning("campaign failed: \(error)")
            evaluateAgain = true
        }
    }

    private func becomePrimary(term: Int64, view: ClusterView) async {
        let absence = election.leaderAbsentSince.map { ContinuousClock.now - $0 }
        election.won(term: term)
        record(.tookLeaderKey(term: term, afterAbsence: absence))
        logger.notice("took the leader key: term \(term)\(absence.map { ", \($0.clusterText) after the key was seen absent" } ?? "")")
        // The address first: a restored service rebuilds its TCP connections on it (a connect
        // in repair mode from an address the host does not hold finds no route). Clients
        // meanwhile get a refusal here rather than silence from the dead host.
        if let address {
            do {
                try await address.take()
                record(.addressTaken(term: term))
                logger.info("service address taken")
            } catch {
                logger.error("taking the service address failed at term \(term): \(error); giving the key up")
                await abdicate(term: term, reason: "address: \(error)")
                return
            }
        }
        guard election.role == .primary(term: term) else {
            // Fenced while taking the address: the fence dropped it already, unless it came
            // after; drop it again.
            await address?.release()
            return
        }
        do {
            if let frozen = frozenTerm {
                // This node's own service, stopped at its fence and never answering since: the
                // newest state there is. The address was dropped at the fence and is taken again above.
                frozenTerm = nil
                try await replica.resume(term: term)
                logger.notice("resumed the service fenced at term \(frozen)")
            } else {
                try await replica.promote(term: term)
            }
        } catch {
            logger.error("promotion failed at term \(term): \(error); giving the key up, not ready until restarted")
            promotionFailure = "promotion failed: \(error)"
            await abdicate(term: term, reason: "promotion failed: \(error)")
            return
        }
        guard election.role == .primary(term: term) else {
            // Fenced while the service was coming to life: the fence found nothing to stop yet.
            await replica.fence()
            return
        }
        record(.promoted(term: term))
        logger.notice("primary at term \(term)")
        await protect(term: term, view: view)
        await publish(record(for: await replica.state()))
    }

    /// Stops the service, deletes the leader key if it is still ours, and rejoins.
    private func abdicate(term: Int64, reason: String) async {
        await fence(reason: reason)
        _ = try? await etcd.txn(compare: [.lease(key: keys.leader, equals: lease)], success: [.delete(key: keys.leader)])
        await rejoin(keepService: false)
    }

    private func protect(term: Int64, view: ClusterView) async {
        let standbys = view.members.filter { $0.node != node && $0.role == .standby }.sorted { $0.node < $1.node }
        let names = standbys.map(\.node)
        guard names != protecting else { return }
        do {
            try await replica.protect(term: term, standbys: standbys)
            protecting = names
            logger.info("protecting onto \(names.isEmpty ? "no standby" : names.joined(separator: ", "))")
        } catch {
            logger.error("protect onto \(names.joined(separator: ", ")) failed: \(error)")
        }
    }

    // MARK: Keys

    private func record(for state: ReplicaState) -> MemberRecord {
        let role: MemberRecord.Role
        var term = state.term
        var ready = state.ready && promotionFailure == nil
        var reason = promotionFailure ?? state.reason
        switch election.role {
        case .primary(let held):
            role = .primary
            term = max(term, held)
        case .follower:
            role = frozenTerm == nil ? .standby : .fenced
            if let frozenTerm {
                term = max(term, frozenTerm)
                reason = "fenced at term \(frozenTerm), service kept stopped: resumed if this node wins the key again"
            }
        case .fenced:
            role = .fenced
            ready = false
        }
        return MemberRecord(node: node, role: role, term: term, epoch: state.epoch, ready: ready,
                            reason: reason.map { String($0.prefix(200)) }, replicationAddress: replicationAddress,
                            following: election.following?.node)
    }

    private func publish(_ me: MemberRecord) async {
        guard me != published, lease != 0 else { return }
        do {
            try await etcd.put(keys.member(node), value: me.encoded(), lease: lease)
            published = me
        } catch {
            noteEtcdFailure("publishing \(keys.member(node))", error)
        }
    }

    /// The service's keys at one revision, hostile values set aside.
    public func readView() async throws -> ClusterView {
        try await ClusterNode.readView(etcd, keys)
    }

    public static func readView(_ etcd: EtcdClient, _ keys: ClusterKeys) async throws -> ClusterView {
        let range = try await etcd.get(prefix: keys.root)
        var view = ClusterView(revision: range.revision, leader: nil, members: [])
        for kv in range.keyValues {
            if kv.key == keys.leader {
                let name = String(decoding: kv.value, as: UTF8.self)
                if !MemberRecord.isValidNodeName(name) { view.invalid[kv.key] = "the leader key's value is not a node name" }
                // An invalid holder still holds the key: nobody can take it until it goes.
                view.leader = LeaderKey(node: MemberRecord.isValidNodeName(name) ? name : "", term: kv.createRevision, lease: kv.lease)
            } else if kv.key.hasPrefix(keys.membersPrefix) {
                let name = kv.key.dropFirst(keys.membersPrefix.count)
                switch MemberRecord.decode(kv.value) {
                case .success(let member) where member.node == name: view.members.append(member)
                case .success: view.invalid[kv.key] = "the record names another node"
                case .failure(let error): view.invalid[kv.key] = error.description
                }
            }
        }
        return view
    }

    private func record(_ kind: NodeEvent.Kind) {
        history.append(NodeEvent(at: .now, kind: kind))
        if history.count > 256 { history.removeFirst(history.count - 256) }
    }

    /// A graceful stop: a primary fences (service stopped, address dropped), then the lease is
    /// revoked so that the keys go at once.
    private func stop() async {
        if case .primary = election.role { await fence(reason: "daemon stopping") }
        if lease != 0 { try? await etcd.revoke(lease) }
        logger.info("stopped")
    }
}
