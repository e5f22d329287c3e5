import Foundation
import Logging
import MitosisCluster
import MitosisClusterTestbed
import Synchronization
import Testing

/// Stands in for the replication layer (issue 13, not merged yet): a fixed committed epoch,
/// and a record of what the daemon asked, with when. Everything else in these tests is real:
/// etcd members in host namespaces, the daemon's lease, watch, election and fence clock, link cuts.
final class RecordingReplica: ReplicaControl {
    struct Call: Sendable {
        let at: ContinuousClock.Instant
        let what: String
    }

    private let state_: Mutex<(state: ReplicaState, calls: [Call])>

    init(epoch: Int64, term: Int64 = 1, ready: Bool = true) {
        state_ = Mutex((ReplicaState(term: term, epoch: epoch, ready: ready, reason: ready ? nil : "no warm clone"), []))
    }

    var calls: [Call] { state_.withLock { $0.calls } }
    func times(_ prefix: String) -> [ContinuousClock.Instant] { calls.filter { $0.what.hasPrefix(prefix) }.map(\.at) }

    private func note(_ what: String) { state_.withLock { $0.calls.append(Call(at: .now, what: what)) } }

    func state() async -> ReplicaState { state_.withLock { $0.state } }
    /// Receiving the leader's epochs: the committed epoch is now of its term.
    func follow(leader: String, term: Int64) async throws {
        note("follow \(leader) \(term)")
        state_.withLock { $0.state.term = term }
    }
    func promote(term: Int64) async throws {
        note("promote \(term)")
        state_.withLock { $0.state.term = term }
    }
    func protect(term: Int64, standbys: [MemberRecord]) async throws { note("protect \(term) \(standbys.map(\.node))") }
    func fence() async { note("fence") }
    /// The fenced service goes on: it holds this node's epoch, and the term is the new one.
    func resume(term: Int64) async throws {
        note("resume \(term)")
        state_.withLock { $0.state.term = term }
    }
    /// The fenced service is gone: a full resync would be needed, so this node is behind everyone.
    func discard() async {
        note("discard")
        state_.withLock { $0.state.epoch = 0; $0.state.term = 0 }
    }
}

/// One daemon in a host namespace, run as a task of the test.
struct RunningNode {
    let node: ClusterNode
    let replica: RecordingReplica
    let task: Task<Void, Never>

    static func start(_ bed: ClusterTestbed, host: Int, name: String, service: String, epoch: Int64, ready: Bool = true,
                      timings: ElectionTimings = ElectionTimings()) throws -> RunningNode {
        let client = try bed.etcdClient(in: bed.hostNamespace(host), timeout: timings.requestTimeout)
        let replica = RecordingReplica(epoch: epoch, ready: ready)
        var logger = Logger(label: "test.cluster")
        logger.logLevel = ProcessInfo.processInfo.environment["MITOSIS_CLUSTER_LOG"] != nil ? .info : .critical
        let node = ClusterNode(service: service, node: name, replicationAddress: "\(bed.hostAddress(host)):7100",
                               timings: timings, etcd: client, replica: replica, address: nil, logger: logger)
        return RunningNode(node: node, replica: replica, task: Task { await node.run() })
    }

    func stop() async {
        task.cancel()
        await task.value
    }

    /// Waits until `condition` holds for this node's role, up to `timeout`.
    func wait(for timeout: Duration, _ condition: (Election.Role) -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition(await node.role) { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return condition(await node.role)
    }
}

func isPrimary(_ role: Election.Role) -> Bool { if case .primary = role { true } else { false } }
func isFenced(_ role: Election.Role) -> Bool { if case .fenced = role { true } else { false } }

/// Never two primaries: each node's primary intervals (promote or resume → fence) are disjoint
/// from every other node's.
func expectDisjointPrimaries(_ nodes: [RunningNode], until end: ContinuousClock.Instant, sourceLocation: SourceLocation = #_sourceLocation) {
    var intervals: [(String, ContinuousClock.Instant, ContinuousClock.Instant)] = []
    for running in nodes {
        var open: ContinuousClock.Instant?
        for call in running.replica.calls {
            if call.what.hasPrefix("promote") || call.what.hasPrefix("resume") { open = call.at }
            if call.what == "fence", let started = open { intervals.append((running.node.node, started, call.at)); open = nil }
        }
        if let open { intervals.append((running.node.node, open, end)) }
    }
    for i in intervals.indices {
        for j in intervals.indices where j > i && intervals[i].0 != intervals[j].0 {
            let overlap = intervals[i].1 < intervals[j].2 && intervals[j].1 < intervals[i].2
            #expect(!overlap, "two primaries: \(intervals[i].0) and \(intervals[j].0)", sourceLocation: sourceLocation)
        }
    }
}

extension ClusterOnEtcd {
    @Suite("Failover election on a real etcd cluster", .serialized)
    struct FailoverElectionTests {
        @Test("two standbys at different epochs: the newer one wins, 10 trials of 10; the cut-off primary fences first")
        func newerStandbyWins() async throws {
            try await withClusterTestbed { bed in
                var wins = 0
                var failovers: [Duration] = []
                for trial in 0..<10 {
                    let service = "svc\(trial)"
                    let a = try RunningNode.start(bed, host: 0, name: "a", service: service, epoch: 30)
                    #expect(try await a.wait(for: .seconds(5), isPrimary), "trial \(trial): a never became primary")
                    // The newer standby alternates between hosts 1 and 2 (and between names b and c).
                    let bEpoch: Int64 = trial % 2 == 0 ? 20 : 10
                    let b = try RunningNode.start(bed, host: 1, name: "b", service: service, epoch: bEpoch)
                    let c = try RunningNode.start(bed, host: 2, name: "c", service: service, epoch: 30 - bEpoch)
                    let newer = bEpoch == 20 ? b : c
                    for standby in [b, c] {
                        let following = try await standby.wait(for: .seconds(5)) { _ in !standby.replica.times("follow").isEmpty }
                        #expect(following, "trial \(trial): \(standby.node.node) never followed a")
                    }
                    try await Task.sleep(for: .milliseconds(300))  // both records published
                    let cut = ContinuousClock.now
                    try await bed.setLink(0, up: false)
                    let someone = try await newer.wait(for: .seconds(8), isPrimary)
                    let end = ContinuousClock.now
                    let other = newer.node === b.node ? c : b
                    if someone, !isPrimary(await other.node.role) { wins += 1 }
                    if let took = newer.replica.times("promote").first { failovers.append(took - cut) }
                    // The old primary fenced before the new one promoted.
                    let fencedAt = try #require(a.replica.times("fence").first, "trial \(trial): a never fenced")
                    if let promoted = newer.replica.times("promote").first { #expect(fencedAt < promoted) }
                    expectDisjointPrimaries([a, b, c], until: end)
                    try await bed.setLink(0, up: true)
                    for node in [a, b, c] { await node.stop() }
                    try await bed.waitForQuorum()
                }
                #expect(wins == 10)
                let sorted = failovers.sorted()
                print("cluster: newer standby won \(wins)/10; link cut → promote: \(sorted.map { "\($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) ms" })")
            }
        }

        @Test("a primary cut off from etcd fences itself within the lease TTL of the cut")
        func partitionedPrimaryFences() async throws {
            try await withClusterTestbed { bed in
                let a = try RunningNode.start(bed, host: 0, name: "a", service: "svc", epoch: 5)
                #expect(try await a.wait(for: .seconds(5), isPrimary))
                let b = try RunningNode.start(bed, host: 1, name: "b", service: "svc", epoch: 5)
                try await Task.sleep(for: .milliseconds(500))
                let cut = ContinuousClock.now
                try await bed.setLink(0, up: false)
                #expect(try await a.wait(for: .seconds(3), isFenced))
                let fencedAt = try #require(a.replica.times("fence").first)
                #expect(fencedAt - cut <= ElectionTimings().leaseTTL, "fenced \(fencedAt - cut) after the cut")
                #expect(try await b.wait(for: .seconds(6), isPrimary), "b took over")
                if let promoted = b.replica.times("promote").first { #expect(fencedAt < promoted) }
                expectDisjointPrimaries([a, b], until: .now)
                // Healed: a rejoins as a follower (its service discarded) and follows b.
                try await bed.setLink(0, up: true)
                let rejoined = try await a.wait(for: .seconds(6)) { _ in a.replica.times("follow").count >= 1 && !a.replica.times("discard").isEmpty }
                #expect(rejoined, "a rejoined as a standby of b")
                for node in [a, b] { await node.stop() }
            }
        }

        @Test("without quorum nobody is promoted and the primary fences; with quorum back, the fenced primary (newest state, nobody else holds the key) resumes its service and the standbys follow it")
        func noPromotionWithoutQuorum() async throws {
            try await withClusterTestbed { bed in
                let a = try RunningNode.start(bed, host: 0, name: "a", service: "svc", epoch: 30)
                #expect(try await a.wait(for: .seconds(5), isPrimary))
                let b = try RunningNode.start(bed, host: 1, name: "b", service: "svc", epoch: 20)
                let c = try RunningNode.start(bed, host: 2, name: "c", service: "svc", epoch: 10)
                try await Task.sleep(for: .milliseconds(600))
                // Every host alone: no etcd member has a majority.
                for host in 0..<3 { try await bed.setLink(host, up: false) }
                let cut = ContinuousClock.now
                try await Task.sleep(for: .seconds(4))
                #expect(b.replica.times("promote").isEmpty && c.replica.times("promote").isEmpty, "a promotion without quorum")
                let fencedAt = try #require(a.replica.times("fence").first, "a did not fence")
                #expect(fencedAt - cut <= ElectionTimings().leaseTTL)
                for host in 0..<3 { try await bed.setLink(host, up: true) }
                // The rule (Docs/cluster.md, "A fenced primary may come back"): nobody took the key
                // meanwhile, so a keeps its stopped service and, being ahead (epoch 30, and its
                // frozen service holds what it acknowledged after), wins the key and resumes it.
                // It is never promoted from an epoch, nor discarded; b and c follow it.
                let aBack = try await a.wait(for: .seconds(10), isPrimary)
                #expect(aBack, "a did not resume after quorum came back")
                let resumed = try #require(a.replica.times("resume").first, "a became primary without resuming its service")
                #expect(resumed > fencedAt)
                #expect(a.replica.times("discard").isEmpty && a.replica.times("promote").count == 1, "\(a.replica.calls.map(\.what))")
                #expect(b.replica.times("promote").isEmpty && c.replica.times("promote").isEmpty, "a standby was promoted")
                guard case .primary(let term) = await a.node.role else { return }
                for standby in [b, c] {
                    let follows = try await standby.wait(for: .seconds(5)) { _ in standby.replica.calls.contains { $0.what == "follow a \(term)" } }
                    #expect(follows, "\(standby.node.node) does not follow a at term \(term): \(standby.replica.calls.map(\.what))")
                }
                expectDisjointPrimaries([a, b, c], until: .now)
                for node in [a, b, c] { await node.stop() }
            }
        }

        @Test("a standby that is not ready is never elected, however new its epoch")
        func unreadyStandbyNeverElected() async throws {
            try await withClusterTestbed { bed in
                let a = try RunningNode.start(bed, host: 0, name: "a", service: "svc", epoch: 30)
                #expect(try await a.wait(for: .seconds(5), isPrimary))
                let b = try RunningNode.start(bed, host: 1, name: "b", service: "svc", epoch: 99, ready: false)
                let c = try RunningNode.start(bed, host: 2, name: "c", service: "svc", epoch: 10)
                try await Task.sleep(for: .milliseconds(600))
                try await bed.setLink(0, up: false)
                #expect(try await c.wait(for: .seconds(8), isPrimary), "c, the only ready standby, took over")
                #expect(b.replica.times("promote").isEmpty)
                try await bed.setLink(0, up: true)
                for node in [a, b, c] { await node.stop() }
            }
        }
    }
}
