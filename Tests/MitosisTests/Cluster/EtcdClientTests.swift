import Foundation
import MitosisCluster
import MitosisClusterTestbed
import Testing

/// The etcd client against a real 3-member etcd cluster in network namespaces.
extension ClusterOnEtcd {
    @Suite("etcd client on a real cluster", .serialized)
    struct EtcdClientTests {
        @Test("a lease is granted, renewed, and its key vanishes after the TTL without renewal")
        func leaseLifecycle() async throws {
            try await withClusterTestbed { bed in
                let client = try bed.etcdClient()
                // A 2 s TTL: renewals every 300 ms keep it alive even when a loaded machine (the
                // whole suite runs beside this test) makes one round trip take most of a second.
                let lease = try await client.grant(ttlSeconds: 2)
                #expect(lease.id > 0 && lease.ttlSeconds == 2)
                try await client.put("/t/leased", value: Array("v".utf8), lease: lease.id)
                // Renewals keep the key past several TTLs.
                let start = ContinuousClock.now
                var lastRenewal = start
                while ContinuousClock.now - start < .milliseconds(5000) {
                    let renewal = try await client.keepAlive(lease.id)
                    #expect(renewal.ttlSeconds == 2 && renewal.lease == lease.id)
                    #expect(renewal.deadline == renewal.sentAt + .seconds(2))
                    lastRenewal = renewal.sentAt
                    try await Task.sleep(for: .milliseconds(300))
                }
                let kept = try #require(try await client.get("/t/leased"))
                #expect(kept.value == Array("v".utf8) && kept.lease == lease.id)
                // Without renewal: gone no earlier than the TTL after the last renewal was sent (the
                // deadline a primary fences by), within the TTL + etcd's expiry scan (500 ms) + slack.
                var gone: Duration?
                while ContinuousClock.now - lastRenewal < .seconds(5) {
                    if try await client.get("/t/leased") == nil { gone = ContinuousClock.now - lastRenewal; break }
                    try await Task.sleep(for: .milliseconds(50))
                }
                let after = try #require(gone, "the leased key outlived its TTL by 3 s")
                #expect(after >= .seconds(2), "gone \(after) after the last renewal was sent: before the TTL")
                await #expect(throws: EtcdError.leaseExpired(id: lease.id)) { try await client.keepAlive(lease.id) }
            }
        }

        @Test("compare-and-swap on an absent key: exactly one of two takers wins, its create revision is the term")
        func leaderTakeByCAS() async throws {
            try await withClusterTestbed { bed in
                // Two takers on different hosts' namespaces and different first endpoints.
                let a = try bed.etcdClient(endpoints: [bed.etcdEndpoint(0)], in: bed.hostNamespace(0))
                let b = try bed.etcdClient(endpoints: [bed.etcdEndpoint(1)], in: bed.hostNamespace(1))
                let leaseA = try await a.grant(ttlSeconds: 2), leaseB = try await b.grant(ttlSeconds: 2)
                func take(_ client: EtcdClient, _ name: String, _ lease: Int64) async throws -> EtcdTxnResult {
                    try await client.txn(compare: [.createRevision(key: "/t/leader", equals: 0)],
                                         success: [.put(key: "/t/leader", value: Array(name.utf8), lease: lease), .get(key: "/t/leader")],
                                         failure: [.get(key: "/t/leader")])
                }
                async let first = take(a, "a", leaseA.id)
                async let second = take(b, "b", leaseB.id)
                let results = try await [first, second]
                #expect(results.filter { $0.succeeded }.count == 1)
                let winner = try #require(results.first { $0.succeeded })
                let loser = try #require(results.first { !$0.succeeded })
                guard case .range(let won) = winner.results[1], case .range(let seen) = loser.results[0], !won.isEmpty else {
                    Issue.record("unexpected results \(results)")
                    return
                }
                #expect(won.count == 1 && seen == won, "the loser reads the winner's key")
                #expect(won[0].createRevision == winner.revision, "term = the key's create revision = the txn's revision")
                // A second take fails while the key lives; once the winner's lease is revoked, the
                // loser's take succeeds with a larger term.
                let aWon = won[0].value == Array("a".utf8)
                let again = try await take(aWon ? b : a, aWon ? "b" : "a", aWon ? leaseB.id : leaseA.id)
                #expect(!again.succeeded)
                try await (aWon ? a : b).revoke(won[0].lease)
                let retake = try await take(aWon ? b : a, aWon ? "b" : "a", aWon ? leaseB.id : leaseA.id)
                #expect(retake.succeeded)
                guard case .range(let now) = retake.results[1], !now.isEmpty else { return }
                #expect(now[0].createRevision > won[0].createRevision)
            }
        }

        @Test("a watch sees the delete when the key's lease expires")
        func watchSeesExpiry() async throws {
            try await withClusterTestbed { bed in
                let client = try bed.etcdClient()
                let lease = try await client.grant(ttlSeconds: 1)
                try await client.put("/t/watched", value: Array("x".utf8), lease: lease.id)
                let created = try #require(try await client.get("/t/watched"))
                let start = ContinuousClock.now
                var deletion: EtcdWatchEvent?
                for try await events in client.watch("/t/watched", fromRevision: created.modRevision + 1) {
                    if let delete = events.first(where: { if case .delete = $0 { true } else { false } }) {
                        deletion = delete
                        break
                    }
                }
                let elapsed = ContinuousClock.now - start
                guard case .delete(let key, let revision, let previous) = try #require(deletion) else { return }
                #expect(key == "/t/watched" && revision > created.modRevision)
                #expect(previous?.value == Array("x".utf8) && previous?.lease == lease.id)
                #expect(elapsed < .seconds(3), "expiry seen after \(elapsed)")
            }
        }

        @Test("without quorum, requests fail within their deadline; with it back, they succeed")
        func quorumLoss() async throws {
            try await withClusterTestbed { bed in
                // A client that can reach only host 0's member.
                let client = try bed.etcdClient(endpoints: [bed.etcdEndpoint(0)], in: bed.hostNamespace(0), timeout: .milliseconds(400))
                try await bed.setLink(1, up: false)
                try await bed.setLink(2, up: false)
                try await Task.sleep(for: .milliseconds(700))  // past the election timeout: host 0 knows it is alone
                let start = ContinuousClock.now
                await #expect(throws: EtcdError.self) { try await client.grant(ttlSeconds: 1) }
                await #expect(throws: EtcdError.self) {
                    try await client.txn(compare: [.createRevision(key: "/t/q", equals: 0)], success: [.put(key: "/t/q", value: [1])])
                }
                #expect(ContinuousClock.now - start < .seconds(2), "each call bounded by its 400 ms timeout")
                try await bed.setLink(1, up: true)
                try await bed.setLink(2, up: true)
                try await bed.waitForQuorum(through: client)
                // The failed txn is not necessarily lost: Raft keeps the proposal in host 0's log and
                // may commit it once quorum is back. A timed-out write is "unknown", never "not
                // done", which is why a campaign reads the leader key back (Docs/cluster.md).
                _ = try await client.grant(ttlSeconds: 1)
            }
        }

        @Test("a client skips an unreachable endpoint")
        func endpointFailover() async throws {
            try await withClusterTestbed { bed in
                bed.killEtcd(0)
                try await bed.waitForQuorum()
                // Endpoint 0 comes first and refuses: the client goes on to the next.
                let client = try bed.etcdClient(timeout: .milliseconds(300))
                try await client.put("/t/k", value: [7])
                #expect(try await client.get("/t/k")?.value == [7])
            }
        }

        @Test("a keepalive answered by an etcd leader cut off from the others is never confirmed")
        func staleLeaderKeepalive() async throws {
            try await withClusterTestbed { bed in
                // Which host's member leads (etcdctl from the client namespace).
                let status = try await bed.run(in: bed.clientNamespace, ["/usr/bin/etcdctl", "--endpoints",
                                                                         bed.etcdEndpoints.map(\.description).joined(separator: ","),
                                                                         "endpoint", "status", "-w", "json"])
                let entries = try #require(try JSONSerialization.jsonObject(with: Data(status.standardOutput.utf8)) as? [[String: Any]], "\(status.standardError)")
                let leaderHost = try #require(entries.firstIndex { entry in
                    let fields = entry["Status"] as? [String: Any], header = fields?["header"] as? [String: Any]
                    return (fields?["leader"] as? NSNumber) == (header?["member_id"] as? NSNumber)
                }, "no leader in \(status.standardOutput)")
                let client = try bed.etcdClient(endpoints: [bed.etcdEndpoint(leaderHost)], in: bed.hostNamespace(leaderHost), timeout: .milliseconds(150))
                let lease = try await client.grant(ttlSeconds: 2)
                try await bed.setLink(leaderHost, up: false)
                let cut = ContinuousClock.now
                var plainRenewals: Duration = .zero
                while ContinuousClock.now - cut < .milliseconds(1500) {
                    if (try? await client.keepAlive(lease.id)) != nil { plainRenewals = ContinuousClock.now - cut }
                    await #expect(throws: EtcdError.self) { _ = try await client.keepAliveConfirmed(lease.id) }
                    try await Task.sleep(for: .milliseconds(50))
                }
                try await bed.setLink(leaderHost, up: true)
                print("cluster: the cut-off etcd leader (host \(leaderHost)) still renewed the lease \(plainRenewals.clusterText) after the cut; no renewal was confirmed")
            }
        }
    }
}
