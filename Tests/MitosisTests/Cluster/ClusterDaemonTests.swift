import Foundation
import MitosisCluster
import MitosisClusterTestbed
import NIOCore
import NIOPosix
import Testing
@testable import MitosisKernel

/// `mitosis cluster` daemons, one per host namespace, protecting redis-server behind the
/// service address; a client in the client namespace asks the address which node answers.
///
/// Replication is not merged yet, so the replica is `CommandReplica` (a cold standby that
/// starts redis at promotion): these trials measure detection, election, start and address
/// move, not state continuity.
extension ClusterOnEtcd {
    @Suite("mitosis cluster daemons", .serialized,
           .enabled(if: ["/usr/bin/redis-server", "/usr/bin/arping", "/usr/bin/setpriv"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) },
                    "redis-server, arping (iputils-arping) or setpriv is not installed (scripts/setup installs them)"))
    struct ClusterDaemonTests {
        static let service = "redis"

        final class Daemons: @unchecked Sendable {
            let bed: ClusterTestbed
            var processes: [ChildProcess?] = [nil, nil, nil]
            let names = ["a", "b", "c"]

            init(_ bed: ClusterTestbed) { self.bed = bed }

            func configPath(_ host: Int) -> String { "\(bed.directory)/node-\(names[host]).json" }

            func writeConfigs(brokenOn broken: Int? = nil) throws {
                for host in 0..<3 {
                    let directory = "\(bed.directory)/redis-\(names[host])"
                    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                    let config: [String: Any] = [
                        "service": ClusterDaemonTests.service, "node": names[host],
                        "etcd": bed.etcdEndpoints.map(\.description),
                        "replicationAddress": "\(bed.hostAddress(host)):7100",
                        "start": ["/usr/bin/redis-server", "--port", host == broken ? "not-a-port" : "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                                  "--save", "", "--appendonly", "no", "--dir", directory, "--dbfilename", "\(names[host]).rdb"],
                        "address": ["cidr": "\(ClusterTestbed.serviceAddress)/24", "device": "eth0"],
                    ]
                    try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath(host)))
                }
            }

            func start(_ host: Int) throws {
                let log = "\(bed.directory)/daemon-\(names[host]).log"
                let command = ["/usr/bin/ip", "netns", "exec", bed.hostNamespace(host), ToolRun.mitosis, "cluster", "--config", configPath(host)]
                processes[host] = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exec \"$@\" >>\(log) 2>&1", "sh"] + command,
                                                   stdin: .null, stdout: .null, stderr: .null)
            }

            /// SIGKILL: the daemon dies at once, its redis with it (parent-death signal).
            func kill(_ host: Int) {
                processes[host]?.kill()
                processes[host] = nil
            }

            func log(_ host: Int) -> String {
                (try? String(contentsOfFile: "\(bed.directory)/daemon-\(names[host]).log", encoding: .utf8)) ?? ""
            }
        }

        /// Which node's redis answers on the service address (its dbfilename), or nil within `timeout`.
        static func ask(_ group: any EventLoopGroup, timeout: Duration = .milliseconds(200)) async -> String? {
            do {
                let channel = try await ClientBootstrap(group: group).connectTimeout(TimeAmount.milliseconds(Int64(timeout.components.attoseconds / 1_000_000_000_000_000 + timeout.components.seconds * 1000)))
                    .connect(host: ClusterTestbed.serviceAddress, port: 6379) { channel in
                        channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                    }
                let timer = channel.channel.eventLoop.scheduleTask(in: .milliseconds(200)) { channel.channel.close(promise: nil) }
                defer { timer.cancel() }
                return try await channel.executeThenClose { inbound, outbound in
                    try await outbound.write(ByteBuffer(string: "CONFIG GET dbfilename\r\n"))
                    var reply = ""
                    for try await chunk in inbound {
                        reply += String(buffer: chunk)
                        if let range = reply.range(of: #"[abc]\.rdb"#, options: .regularExpression) { return String(reply[range].prefix(1)) }
                        if reply.count > 4096 { return nil }
                    }
                    return nil
                }
            } catch {
                return nil
            }
        }

        @Test("redis behind the service address fails over when the primary's daemon is killed; status shows the cluster")
        func failoverTrials() async throws {
            let trials = Int(ProcessInfo.processInfo.environment["MITOSIS_CLUSTER_TRIALS"] ?? "") ?? 3
            try await withClusterTestbed { bed in
                let daemons = Daemons(bed)
                defer { for host in 0..<3 { daemons.kill(host) } }
                try daemons.writeConfigs()
                for host in 0..<3 { try daemons.start(host) }
                let client = try bed.group(in: bed.clientNamespace)
                let etcd = try bed.etcdClient()

                func waitForAnswer(notFrom old: String?, within limit: Duration) async throws -> (String, Duration)? {
                    let start = ContinuousClock.now
                    while ContinuousClock.now - start < limit {
                        if let who = await Self.ask(client), who != old { return (who, ContinuousClock.now - start) }
                        try await Task.sleep(for: .milliseconds(10))
                    }
                    return nil
                }
                guard let (first, _) = try await waitForAnswer(notFrom: nil, within: .seconds(15)) else {
                    Issue.record("no redis answered on the service address; logs:\n\(daemons.log(0))\n\(daemons.log(1))")
                    return
                }
                var times: [Duration] = []
                var current = first
                for trial in 0..<trials {
                    // Every standby published ready before the primary dies.
                    let deadline = ContinuousClock.now + .seconds(10)
                    while ContinuousClock.now < deadline {
                        let status = try await ClusterStatus.read(etcd: etcd, service: Self.service)
                        if status.members.count == 3, status.members.allSatisfy({ $0.ready }), status.leader == current { break }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    let host = daemons.names.firstIndex(of: current)!
                    let killed = ContinuousClock.now
                    daemons.kill(host)
                    // Generous: this is a behaviour test run beside the whole parallel suite; the
                    // failover time (≤ 3 s at p95 on a quiet machine) is a benchmark's figure.
                    guard let (next, _) = try await waitForAnswer(notFrom: current, within: .seconds(30)) else {
                        Issue.record("trial \(trial): no other node answered within 30 s")
                        break
                    }
                    times.append(ContinuousClock.now - killed)
                    // The client's neighbour entry for the service address is the new host's MAC:
                    // the gratuitous ARP moved it.
                    let newHost = daemons.names.firstIndex(of: next)!
                    let link = try await ToolRun("/usr/bin/ip", ["-n", bed.hostNamespace(newHost), "-o", "link", "show", "eth0"])
                    let neighbour = try await ToolRun("/usr/bin/ip", ["-n", bed.clientNamespace, "neigh", "show", ClusterTestbed.serviceAddress])
                    let mac = link.standardOutput.split(separator: " ").drop { $0 != "link/ether" }.dropFirst().first.map(String.init) ?? "?"
                    #expect(neighbour.standardOutput.contains(mac), "trial \(trial): client sees \(neighbour.standardOutput), new host has \(mac)")
                    // The killed daemon's redis died with it: only etcd is left in that namespace.
                    let pids = try await ToolRun("/usr/bin/ip", ["netns", "pids", bed.hostNamespace(host)])
                    #expect(pids.standardOutput.split(separator: "\n").count == 1, "trial \(trial): \(pids.standardOutput)")
                    // The host comes back: its daemon rejoins as a standby.
                    try daemons.start(host)
                    current = next
                }
                let status = try await ToolRun("/usr/bin/ip", ["netns", "exec", bed.clientNamespace, ToolRun.mitosis, "cluster", "status",
                                                                "--service", Self.service] + bed.etcdEndpoints.flatMap { ["--etcd", $0.description] })
                #expect(status.status == 0, "\(status.standardError)")
                #expect(status.standardOutput.contains("leader \(current)"), "\(status.standardOutput)")
                print("cluster status:\n\(status.standardOutput)")
                let json = try await ToolRun("/usr/bin/ip", ["netns", "exec", bed.clientNamespace, ToolRun.mitosis, "cluster", "status", "--json",
                                                              "--service", Self.service, "--etcd", bed.etcdEndpoints[1].description])
                let decoded = try JSONDecoder().decode(ClusterStatus.self, from: Data(json.standardOutput.utf8))
                #expect(decoded.leader == current && decoded.members.filter { $0.role == "primary" }.count == 1)
                if ProcessInfo.processInfo.environment["MITOSIS_CLUSTER_LOG"] != nil {
                    for host in 0..<3 { print("--- daemon \(daemons.names[host]):\n\(daemons.log(host))") }
                }
                let ms = times.map { Int($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) }.sorted()
                print("cluster: \(ms.count) failovers (daemon SIGKILL → redis answers from another node), ms: \(ms)")
                #expect(times.count == trials)
            }
        }

        @Test("a primary cut off from etcd and the standbys while the client still reaches it stops answering within the TTL; never two nodes answer within 100 ms")
        func partitionedPrimary() async throws {
            try await withClusterTestbed { bed in
                let daemons = Daemons(bed)
                defer { for host in 0..<3 { daemons.kill(host) } }
                try daemons.writeConfigs()
                for host in 0..<3 { try daemons.start(host) }
                let client = try bed.group(in: bed.clientNamespace)
                let etcd = try bed.etcdClient()
                var primary: String?
                let deadline = ContinuousClock.now + .seconds(15)
                while ContinuousClock.now < deadline {
                    let status = try await ClusterStatus.read(etcd: etcd, service: Self.service)
                    if status.members.count == 3, status.members.allSatisfy({ $0.ready }), let leader = status.leader,
                       await Self.ask(client) == leader {
                        primary = leader
                        break
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                let old = try #require(primary, "no primary answered")
                let host = daemons.names.firstIndex(of: old)!
                // A bounded write load from the client through the service address, the whole time:
                // one SET at a time, as the observer asks who answers.
                let writer = AcknowledgedWriter(group: client)
                let writing = Task { await writer.run(pause: .milliseconds(5)) }
                defer { writer.stop() }
                try await Task.sleep(for: .milliseconds(500))
                // The primary's host loses the other hosts (etcd and standbys), not the client.
                let others = (0..<3).filter { $0 != host }
                for other in others { try await ClusterTestbed.ip(["-n", bed.hostNamespace(host), "route", "add", "blackhole", "\(bed.hostAddress(other))/32"]) }
                let cut = ContinuousClock.now
                var answers: [(ContinuousClock.Instant, String)] = []
                while ContinuousClock.now - cut < .seconds(10) {
                    if let who = await Self.ask(client) { answers.append((.now, who)) }
                    // The new primary answered 20 times and the writer (which may have been in a
                    // connect timeout when it took over) had a write acknowledged there too.
                    if answers.filter({ $0.1 != old }).count >= 20,
                       writer.acknowledged.contains(where: { $0.instant > cut + .seconds(1) }) { break }
                    try await Task.sleep(for: .milliseconds(5))
                }
                for other in others { try await ClusterTestbed.ip(["-n", bed.hostNamespace(host), "route", "del", "blackhole", "\(bed.hostAddress(other))/32"]) }
                writer.stop()
                await writing.value
                let writes = writer.acknowledged
                #expect(writes.contains { $0.instant < cut } && writes.contains { $0.instant > cut + .seconds(1) },
                        "the write load did not run through the partition: \(writes.count) writes acknowledged")
                if ProcessInfo.processInfo.environment["MITOSIS_CLUSTER_LOG"] != nil {
                    try await Task.sleep(for: .seconds(2))  // the old primary rejoins
                    for host in 0..<3 { print("--- daemon \(daemons.names[host]):\n\(daemons.log(host))") }
                }
                let lastOld = answers.last { $0.1 == old }?.0
                let firstNew = try #require(answers.first { $0.1 != old }, "no other node answered").0
                if let lastOld {
                    // Within the TTL on a machine that runs the daemons' timers on time (Docs/cluster.md
                    // gives the figure); a loaded parallel run delays them by seconds, so the bound here
                    // is looser. What must hold under any load is the next line: never two answering.
                    #expect(lastOld - cut <= ElectionTimings().leaseTTL + .seconds(10), "the old primary answered \(lastOld - cut) after the cut")
                    #expect(firstNew - lastOld >= .milliseconds(100), "two nodes answered \(firstNew - lastOld) apart")
                }
                #expect(!answers.contains { $0.0 > firstNew && $0.1 == old }, "the old primary answered again")
                let ms = { (d: Duration) in d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000 }
                print("cluster partition: old primary's last answer \(lastOld.map { "\(ms($0 - cut)) ms" } ?? "none") after the cut, new primary's first \(ms(firstNew - cut)) ms after; under load: \(writes.count) writes acknowledged (\(writes.filter { $0.instant > cut }.count) after the cut), \(writer.failed) failed or unanswered")
            }
        }

        @Test("SIGTERM stops the primary's daemon gracefully: it fences, revokes its lease, and a standby serves well within the TTL")
        func gracefulStop() async throws {
            try await withClusterTestbed { bed in
                let daemons = Daemons(bed)
                defer { for host in 0..<3 { daemons.kill(host) } }
                try daemons.writeConfigs()
                for host in 0..<3 { try daemons.start(host) }
                let client = try bed.group(in: bed.clientNamespace)
                let etcd = try bed.etcdClient()
                var primary: String?
                let deadline = ContinuousClock.now + .seconds(15)
                while ContinuousClock.now < deadline && primary == nil {
                    let status = try await ClusterStatus.read(etcd: etcd, service: Self.service)
                    if status.members.count == 3, status.members.allSatisfy({ $0.ready }), let leader = status.leader,
                       await Self.ask(client) == leader {
                        primary = leader
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
                let old = try #require(primary, "no primary answered")
                let host = daemons.names.firstIndex(of: old)!
                let stopped = ContinuousClock.now
                daemons.processes[host]?.signal(15)
                var next: String?
                while ContinuousClock.now - stopped < .seconds(5) && next == nil {
                    if let who = await Self.ask(client), who != old { next = who }
                    try await Task.sleep(for: .milliseconds(10))
                }
                let elapsed = ContinuousClock.now - stopped
                #expect(next != nil, "no standby took over; log:\n\(daemons.log(host))")
                #expect(elapsed < ElectionTimings().leaseTTL, "took \(elapsed.clusterText): the lease was not revoked")
                let exited = try await Blocking.run { daemons.processes[host]?.wait() }
                #expect(exited.map(ChildProcess.exitCode) == 0, "the daemon exits 0 after a graceful stop")
                #expect(daemons.log(host).contains("FENCED") && daemons.log(host).contains("daemon stopping"))
                print("cluster: SIGTERM to the primary's daemon → another node answers after \(elapsed.clusterText)")
            }
        }

        @Test("a misconfigured service fails its promotion: that node gives the key up, says why, and a healthy node takes over")
        func misconfiguredService() async throws {
            try await withClusterTestbed { bed in
                let daemons = Daemons(bed)
                defer { for host in 0..<3 { daemons.kill(host) } }
                try daemons.writeConfigs(brokenOn: 0)
                try daemons.start(0)  // a alone first: it takes the key, and its redis exits at once
                let etcd = try bed.etcdClient()
                var aFailed = false
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < deadline && !aFailed {
                    let status = try await ClusterStatus.read(etcd: etcd, service: Self.service)
                    aFailed = status.members.contains { $0.node == "a" && !$0.ready && ($0.reason ?? "").contains("promotion failed") }
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(aFailed, "a did not report its failed promotion; log:\n\(daemons.log(0))")
                #expect(daemons.log(0).contains("promotion failed at term"))
                for host in 1..<3 { try daemons.start(host) }
                let client = try bed.group(in: bed.clientNamespace)
                var answered: String?
                let until = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < until && answered == nil {
                    answered = await Self.ask(client)
                    try await Task.sleep(for: .milliseconds(50))
                }
                // b and c start together; whichever published first may win. Never a.
                #expect(answered == "b" || answered == "c", "a healthy node serves; got \(answered ?? "nothing")")
                let status = try await ClusterStatus.read(etcd: etcd, service: Self.service)
                #expect(status.leader == answered)
            }
        }
    }
}
