import Foundation
import MitosisCluster
import MitosisClusterTestbed
import MitosisImage
import MitosisReplication
import NIOCore
import NIOPosix
import Testing
@testable import MitosisKernel

extension ClusterOnEtcd {
    @Suite("failover with hot standby", .serialized,
           .enabled(if: ["/usr/bin/redis-server", "/usr/bin/arping", "/usr/bin/setpriv", "/usr/bin/unshare"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) },
                    "redis-server, arping, setpriv or unshare is not installed (scripts/setup installs them)"))
    struct StatefulFailoverTests {
        /// Polls `ClusterStatus` until `condition` holds; the last status.
        static func waitForStatus(_ etcd: EtcdClient, within limit: Duration, _ condition: (ClusterStatus) -> Bool) async throws -> ClusterStatus? {
            let deadline = ContinuousClock.now + limit
            while ContinuousClock.now < deadline {
                if let status = try? await ClusterStatus.read(etcd: etcd, service: HotDaemons.service), condition(status) { return status }
                try await Task.sleep(for: .milliseconds(50))
            }
            return nil
        }

        /// The epoch the new primary was promoted from, and when its checkpoint started.
        static func promotedEpoch(_ directory: String) throws -> (epoch: Epoch, created: Date) {
            let newest = try #require(StandbyDirectory(directory).scan().newest, "\(directory) holds no epoch")
            let created = try Date(newest.image.manifest.created, strategy: .iso8601)
            return (newest.epoch, created)
        }

        @Test("redis with its state: the primary's host killed, then cut off; the client finds every key acknowledged before the promoted epoch; the old primary rejoins and becomes ready")
        func stateCarryingFailover() async throws {
            // The keys "acknowledged before the promoted epoch and missing" were the test's
            // bookkeeping: a reply the old primary sent just before the failure reached the client
            // just after it, and the next failover counted that write (lost, after its epoch) as
            // owed. Fixed (the old term's writes end at the new primary's first acknowledgement).
            // Still seen: the promotion on a host where a discarded service left orphaned TCP
            // sockets fails with EADDRNOTAVAIL while rebuilding a connection with the same four
            // addresses and ports (the next standby then takes over), and the service address
            // refusing while that happens (Docs/cluster.md, "Not done yet").
            // After the merge of main (15:08): both standbys' promotions of an epoch of a restored
            // redis failed with "restore failed while binding the TCP socket of fd 9 to
            // 10.231.0.100:6379: Address already in use". Fixed: that socket was a client
            // connection reset during the freeze, recorded as a socket bound to the service
            // address (RedisRepeatedRestoreTests, Docs/restore.md "Connections that ended").
            // The cut-off old primary not ready within 60 s was seen once and not since; its
            // likely causes (epochs made unrestorable by connections in CLOSE-WAIT, a pid range
            // used again by a restarted host) are fixed, but one run does not prove it.
            await withKnownIssue("the cut-off old primary has not always rejoined ready within 60 s (Docs/cluster.md, Not done yet)", isIntermittent: true) {
                try await run()
            }
        }

        func run() async throws {
            try await withClusterTestbed { bed in
                let daemons = HotDaemons(bed, executable: ToolRun.mitosis)
                defer { daemons.killAll() }
                try await daemons.prepare()
                try await daemons.startAll()
                let etcd = try bed.etcdClient()
                let client = try bed.group(in: bed.clientNamespace)
                func dump() -> String { (0..<3).map { "--- \(daemons.names[$0]):\n\(daemons.log($0).suffix(40000))" }.joined(separator: "\n") }

                // A fresh cluster: a starts redis by its command and protects it onto b and c.
                let healthy = { (status: ClusterStatus) -> Bool in
                    status.leader != nil && status.members.count == 3 && status.members.allSatisfy { $0.ready && $0.epoch > 0 }
                }
                guard try await Self.waitForStatus(etcd, within: .seconds(60), healthy) != nil else {
                    Issue.record("the cluster never became healthy (3 ready members with epochs)\n\(dump())")
                    return
                }
                let writer = AcknowledgedWriter(group: client)
                let writing = Task { await writer.run() }
                defer { writer.stop() }
                try await Task.sleep(for: .seconds(2))

                var failovers: [Duration] = []
                var lost = Set<Int>()
                for trial in ["killed", "cut off"] {
                    let before = try await ClusterStatus.read(etcd: etcd, service: HotDaemons.service)
                    let old = try #require(before.leader)
                    let host = daemons.names.firstIndex(of: old)!
                    let acksBefore = writer.acknowledged.count
                    #expect(acksBefore > 0, "\(trial): the writer had no acknowledgement before the failure")
                    let failed = ContinuousClock.now
                    if trial == "killed" {
                        daemons.kill(host)
                        // Killed once only etcd is left there (a pid namespace's processes end one by one).
                        let limit = ContinuousClock.now + .seconds(10)
                        while ContinuousClock.now < limit,
                              let pids = try? await ToolRun("/usr/bin/ip", ["netns", "pids", bed.hostNamespace(host)]),
                              pids.standardOutput.split(separator: "\n").count > 1 {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                    } else {
                        try await bed.setLink(host, up: false)
                    }
                    // Until the failure took effect, an acknowledgement may still be the old primary's.
                    let effective = Date()

                    // The client sees the service again: a write acknowledged after the failure.
                    var answered: Duration?
                    while ContinuousClock.now - failed < .seconds(30) {
                        if let last = writer.acknowledged.last, last.at > effective,
                           let status = try? await ClusterStatus.read(etcd: etcd, service: HotDaemons.service), let leader = status.leader, leader != old {
                            answered = ContinuousClock.now - failed
                            break
                        }
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    guard let answered else {
                        Issue.record("\(trial): the service did not come back within 30 s\n\(dump())")
                        return
                    }
                    failovers.append(answered)
                    let status = try await ClusterStatus.read(etcd: etcd, service: HotDaemons.service)
                    let winner = try #require(status.leader)
                    let promoted = try Self.promotedEpoch(daemons.standbyDirectory(daemons.names.firstIndex(of: winner)!))
                    // Every key acknowledged before the promoted epoch's checkpoint started is there,
                    // except the ones an earlier failover lost (acknowledged after its epoch: no
                    // output commit yet), which no later epoch can hold.
                    // The old term's writes: every one acknowledged before the new primary's first
                    // (a reply the old primary sent just before the failure can arrive just after it).
                    let back = try #require(writer.acknowledged.first { $0.at > effective })
                    let acks = writer.acknowledged.filter { $0.instant < back.instant && !lost.contains($0.key) }
                    let owed = acks.filter { $0.at < promoted.created }
                    let later = acks.filter { $0.at >= promoted.created }.map(\.key)
                    let missing = Set(try await AcknowledgedWriter.missing(owed.map(\.key), group: client))
                    let missingText = owed.filter { missing.contains($0.key) }.map { "k\($0.key) acknowledged \(Int(promoted.created.timeIntervalSince($0.at) * 1000)) ms before the epoch" }
                    #expect(owed.count > 0 && missing.isEmpty,
                            "\(trial): \(missing.count) of \(owed.count) keys acknowledged before epoch \(promoted.epoch) are missing on \(winner): \(missingText.prefix(10))")
                    let laterMissing = try await AcknowledgedWriter.missing(later, group: client)
                    lost.formUnion(missing)
                    lost.formUnion(laterMissing)
                    print("failover (\(trial)): \(old) → \(winner) from epoch \(promoted.epoch); the client wrote again after \(answered.clusterText); \(owed.count - missing.count) of \(owed.count) keys acknowledged before the epoch present; \(laterMissing.count) of \(later.count) acknowledged after it lost (no output commit yet)")

                    // The old primary's host comes back: it rejoins as a standby, resyncs in full, and becomes ready.
                    if trial == "killed" { try daemons.start(host) } else { try await bed.setLink(host, up: true) }
                    let rejoined = try await Self.waitForStatus(etcd, within: .seconds(60)) { status in
                        status.leader == winner && status.members.count == 3 && status.members.allSatisfy { $0.ready && $0.epoch > 0 }
                            && status.members.first { $0.node == old }?.role == "standby"
                    }
                    #expect(rejoined != nil, "\(trial): \(old) did not rejoin as a ready standby\n\(dump())")
                    if rejoined == nil { return }
                }
                writer.stop()
                await writing.value
                #expect(daemons.log(0).contains("standby started") && !dump().contains("two primaries"))
                print("hot failover: client back after \(failovers.map(\.clusterText)); \(writer.acknowledged.count) writes acknowledged, \(writer.failed) failed")
                if ProcessInfo.processInfo.environment["MITOSIS_CLUSTER_LOG"] != nil { print(dump()) }
            }
        }
    }
}

