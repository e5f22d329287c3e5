import MitosisCluster
import Testing

/// The election and fencing rules on their own: views in, decisions out.
@Suite("Election rules")
struct ElectionRuleTests {
    let timings = ElectionTimings()
    let start = ContinuousClock.now

    func member(_ node: String, term: Int64 = 1, epoch: Int64, ready: Bool = true) -> MemberRecord {
        MemberRecord(node: node, role: .standby, term: term, epoch: epoch, ready: ready, replicationAddress: "\(node):7100")
    }

    @Test("a follower follows a new leader once")
    func follows() {
        var election = Election(node: "b", timings: timings)
        let leader = LeaderKey(node: "a", term: 5, lease: 9)
        let view = ClusterView(revision: 6, leader: leader, members: [member("b", epoch: 3)])
        #expect(election.decide(view: view, me: member("b", epoch: 3), now: start) == .follow(leader))
        #expect(election.decide(view: view, me: member("b", epoch: 3), now: start) == .none)
        let next = LeaderKey(node: "c", term: 8, lease: 10)
        #expect(election.decide(view: ClusterView(revision: 9, leader: next, members: []), me: member("b", epoch: 3), now: start) == .follow(next))
    }

    @Test("with no leader, the ready member first in (term, epoch, name) order campaigns; the others defer")
    func order() {
        let b = member("b", epoch: 20), c = member("c", epoch: 10)
        let view = ClusterView(revision: 7, leader: nil, members: [b, c])
        var electionB = Election(node: "b", timings: timings), electionC = Election(node: "c", timings: timings)
        #expect(electionB.decide(view: view, me: b, now: start) == .campaign)
        guard case .wait(nil, let reason) = electionC.decide(view: view, me: c, now: start) else {
            Issue.record("c did not defer")
            return
        }
        #expect(reason.contains("b is ahead"))
        // b not ready (its promotion failed) or gone (its lease expired): c campaigns.
        #expect(electionC.decide(view: ClusterView(revision: 8, leader: nil, members: [member("b", epoch: 20, ready: false), c]), me: c, now: start) == .campaign)
        #expect(electionC.decide(view: ClusterView(revision: 9, leader: nil, members: [c]), me: c, now: start) == .campaign)
        // A later term beats a higher epoch; equal positions go to the smaller name.
        var electionD = Election(node: "d", timings: timings)
        let d = member("d", term: 2, epoch: 1)
        #expect(electionD.decide(view: ClusterView(revision: 9, leader: nil, members: [b, c, d]), me: d, now: start) == .campaign)
        var electionE = Election(node: "e", timings: timings)
        let e = member("e", epoch: 20)
        #expect(electionE.decide(view: ClusterView(revision: 9, leader: nil, members: [b, e]), me: e, now: start) != .campaign)
    }

    @Test("at the same term and epoch, a fenced primary that kept its stopped service goes before the standbys")
    func fencedPrimaryFirst() {
        var fenced = MemberRecord(node: "c", role: .fenced, term: 4, epoch: 20, ready: true, replicationAddress: "c:7100")
        let b = member("b", term: 4, epoch: 20)
        #expect(MemberRecord.precedes(fenced, b) && !MemberRecord.precedes(b, fenced))
        var electionB = Election(node: "b", timings: timings)
        guard case .wait(nil, let reason) = electionB.decide(view: ClusterView(revision: 9, leader: nil, members: [fenced, b]), me: b, now: start) else {
            Issue.record("b did not defer to the fenced primary")
            return
        }
        #expect(reason.contains("c is ahead"))
        // A newer epoch (or term) elsewhere still wins: the fenced service is older.
        fenced.epoch = 19
        #expect(MemberRecord.precedes(b, fenced))
    }

    @Test("a node that read no view for more than a lease TTL waits one TTL before it campaigns")
    func settlesAfterAnOutage() {
        var election = Election(node: "c", timings: timings)
        let c = member("c", epoch: 10)
        let leader = LeaderKey(node: "a", term: 1, lease: 9)
        _ = election.decide(view: ClusterView(revision: 5, leader: leader, members: [c]), me: c, now: start)
        // 4 s without a view (etcd without quorum), then the key is gone and b's record too
        // (its lease lapsed meanwhile): c waits one TTL for b to publish again.
        let back = start + .seconds(4)
        guard case .wait(let until, _) = election.decide(view: ClusterView(revision: 9, leader: nil, members: [c]), me: c, now: back) else {
            Issue.record("c campaigned at once after the outage")
            return
        }
        #expect(until == back + timings.leaseTTL)
        #expect(election.decide(view: ClusterView(revision: 9, leader: nil, members: [c]), me: c, now: back + .milliseconds(500)) != .campaign)
        #expect(election.decide(view: ClusterView(revision: 9, leader: nil, members: [c]), me: c, now: back + timings.leaseTTL) == .campaign)
    }

    @Test("a member that is not ready never campaigns")
    func notReady() {
        var election = Election(node: "c", timings: timings)
        let me = member("c", epoch: 99, ready: false)
        guard case .wait(nil, _) = election.decide(view: ClusterView(revision: 2, leader: nil, members: [me]), me: me, now: start) else {
            Issue.record("an unready member campaigned")
            return
        }
    }

    @Test("a primary fences at its lease deadline minus the margin, from the send time of its last keepalive")
    func fencesAtDeadline() {
        var election = Election(node: "a", timings: timings)
        election.renewed(sentAt: start, ttlSeconds: 1)
        election.won(term: 4)
        let view = ClusterView(revision: 5, leader: LeaderKey(node: "a", term: 4, lease: 1), members: [])
        let me = MemberRecord(node: "a", role: .primary, term: 4, epoch: 1, ready: true, replicationAddress: "a:1")
        #expect(election.decide(view: view, me: me, now: start + .milliseconds(700)) == .none)
        #expect(election.tick(now: start + .milliseconds(799)) == .none)
        // A renewal sent later moves the deadline; one sent earlier does not.
        election.renewed(sentAt: start + .milliseconds(300), ttlSeconds: 1)
        election.renewed(sentAt: start + .milliseconds(100), ttlSeconds: 1)
        #expect(election.fencePoint == start + .milliseconds(1100))
        #expect(election.tick(now: start + .milliseconds(1099)) == .none)
        guard case .fence = election.tick(now: start + .milliseconds(1100)) else {
            Issue.record("no fence at the fence point")
            return
        }
        #expect(election.role == .fenced(term: 4))
        #expect(election.tick(now: start + .seconds(5)) == .none, "fences once")
    }

    @Test("a primary that sees the leader key held by another term fences")
    func fencesOnLostKey() {
        var election = Election(node: "a", timings: timings)
        election.renewed(sentAt: start, ttlSeconds: 1)
        election.won(term: 4)
        let me = MemberRecord(node: "a", role: .primary, term: 4, epoch: 1, ready: true, replicationAddress: "a:1")
        let view = ClusterView(revision: 9, leader: LeaderKey(node: "b", term: 8, lease: 2), members: [])
        guard case .fence(let reason) = election.decide(view: view, me: me, now: start + .milliseconds(10)) else {
            Issue.record("no fence")
            return
        }
        #expect(reason.contains("b holds it at term 8"))
    }

    @Test("timings that could fence a healthy primary are refused")
    func timingRule() {
        #expect(ElectionTimings().problem == nil)
        #expect(ElectionTimings(leaseTTL: .milliseconds(1500)).problem != nil)
        #expect(ElectionTimings(leaseTTL: .seconds(1), keepaliveInterval: .milliseconds(400), requestTimeout: .milliseconds(200)).problem != nil)
        #expect(ElectionTimings(requestTimeout: .milliseconds(300)).problem != nil)
        #expect(ElectionTimings(fenceMargin: .milliseconds(10)).problem != nil)
    }

    @Test("a ready standby ahead whose record vanishes is still deferred to for one lease TTL; a vanished primary is not")
    func vanishedMemberAhead() {
        let b = member("b", epoch: 20), c = member("c", epoch: 10)
        var election = Election(node: "c", timings: timings)
        let primary = MemberRecord(node: "a", role: .primary, term: 1, epoch: 30, ready: true, replicationAddress: "a:1")
        _ = election.decide(view: ClusterView(revision: 3, leader: LeaderKey(node: "a", term: 1, lease: 1), members: [primary, b, c]), me: c, now: start)
        // The leader key and a's record are gone (a died), and b's record lapsed too.
        let alone = ClusterView(revision: 4, leader: nil, members: [c])
        guard case .wait(let until, let reason) = election.decide(view: alone, me: c, now: start + .milliseconds(300)) else {
            Issue.record("c did not wait for b")
            return
        }
        #expect(until == start + timings.leaseTTL && reason.contains("b was ahead"))
        // b is back within the TTL: c defers to it as to any live member ahead.
        guard case .wait = election.decide(view: ClusterView(revision: 5, leader: nil, members: [b, c]), me: c, now: start + .milliseconds(600)) else {
            Issue.record("c did not defer to b")
            return
        }
        // b gone for more than a TTL: c campaigns. a, the old primary, was never waited for.
        // (c reads the keys meanwhile, as every keepalive interval: a gap of more than a TTL
        // between two views would make it settle first, `settlesAfterAnOutage`.)
        _ = election.decide(view: alone, me: c, now: start + .milliseconds(1200))
        #expect(election.decide(view: alone, me: c, now: start + .milliseconds(1700)) == .campaign)
        var onlyPrimaryAhead = Election(node: "c", timings: timings)
        _ = onlyPrimaryAhead.decide(view: ClusterView(revision: 3, leader: LeaderKey(node: "a", term: 1, lease: 1), members: [primary, c]), me: c, now: start)
        #expect(onlyPrimaryAhead.decide(view: alone, me: c, now: start + .milliseconds(10)) == .campaign)
    }
}
