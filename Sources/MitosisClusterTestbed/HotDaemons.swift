import Foundation
import MitosisCluster
import MitosisKernel

/// Cluster daemons with hot standby (`HotReplica`), each host's daemon the init of a pid
/// namespace of its own (as on separate machines: a restored service keeps its pid).
package final class HotDaemons: @unchecked Sendable {
    package let bed: ClusterTestbed
    package let names = ["a", "b", "c"]
    package private(set) var processes: [ChildProcess?] = [nil, nil, nil]
    package static let service = "redis"
    /// The `mitosis` binary the daemons run.
    package let executable: String
    /// Where each start of a host begins its pids (`ns_last_pid`). The first start (host a,
    /// alone until it holds the leader key: `startAll`) begins at 1000 and starts the service,
    /// whose pid lives there for good; every later start begins at 3000 or above and, a host
    /// using a few thousand pids at most in its life, never wraps around `pid_max` (32768 here)
    /// to reach it. Later starts may share a range: each start is a new pid namespace.
    ///
    /// Earlier, every start had a range of its own out of five that came round again: when the
    /// first leader was not host a, the service's pid was in a range that the sixth restart
    /// used again, and that host's standby took the pid (*"pid 11016 is taken by process 11016
    /// (mitosis standby …)"*): after about ten trials of `mitosis-bench failover`, every run.
    private let ranges = RangeCounter()

    /// The range of start number `start`.
    static func range(_ start: Int) -> Int { start == 0 ? 1000 : 3000 + 3000 * ((start - 1) % 9) }

    /// Starts the three hosts: host a first, alone until it holds the leader key (so that it
    /// starts the service, whose pid is then below every later range), then b and c.
    package func startAll(within limit: Duration = .seconds(60)) async throws {
        try start(0)
        let etcd = try bed.etcdClient()
        let deadline = ContinuousClock.now + limit
        while (try? await ClusterStatus.read(etcd: etcd, service: Self.service))?.leader != names[0] {
            guard ContinuousClock.now < deadline else { throw TestbedError("host a did not take the leader key within \(limit)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        try start(1)
        try start(2)
    }

    package init(_ bed: ClusterTestbed, executable: String) {
        self.bed = bed
        self.executable = executable
    }

    package func configPath(_ host: Int) -> String { "\(bed.directory)/hot-\(names[host]).json" }
    package func standbyDirectory(_ host: Int) -> String { "\(bed.directory)/standby-\(names[host])" }
    package func log(_ host: Int) -> String { (try? String(contentsOfFile: "\(bed.directory)/hot-\(names[host]).log", encoding: .utf8)) ?? "" }

    /// Three nodes protecting redis (memory only) behind the service address; an epoch every
    /// `intervalMilliseconds`.
    package func prepare(intervalMilliseconds: Int = 100) async throws {
        for host in 0..<3 {
            let directory = "\(bed.directory)/redis-\(names[host])"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let config: [String: Any] = [
                "service": Self.service, "node": names[host],
                "etcd": bed.etcdEndpoints.map(\.description),
                "replicationAddress": "\(bed.hostAddress(host)):7100",
                "start": ["/usr/bin/redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                          "--save", "", "--appendonly", "no", "--dir", directory, "--logfile", "\(directory)/redis.log"],
                "address": ["cidr": "\(ClusterTestbed.serviceAddress)/24", "device": "eth0"],
                "replication": ["directory": standbyDirectory(host), "intervalMilliseconds": intervalMilliseconds],
            ]
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath(host)))
        }
    }

    /// Starts the host's daemon as pid 1 of a new pid namespace (`unshare --kill-child`: killing
    /// `unshare` kills the namespace, and with it every process of the host but etcd).
    package func start(_ host: Int) throws {
        let range = Self.range(ranges.next())
        let log = "\(bed.directory)/hot-\(names[host]).log"
        let command = ["/usr/bin/ip", "netns", "exec", bed.hostNamespace(host),
                       "/usr/bin/unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                       "/bin/sh", "-c", "echo \(range) > /proc/sys/kernel/ns_last_pid && exec \"$@\"", "sh",
                       executable, "cluster", "--config", configPath(host)]
        processes[host] = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exec \"$@\" >>\(log) 2>&1", "sh"] + command,
                                           stdin: .null, stdout: .null, stderr: .null)
    }

    /// Everything on the host dies at once: its daemon, standby, service (not etcd, which is
    /// outside the host's pid namespace).
    package func kill(_ host: Int) {
        processes[host]?.kill()
        processes[host] = nil
    }

    package func killAll() { for host in 0..<3 { kill(host) } }
}


private final class RangeCounter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func next() -> Int {
        lock.withLock {
            defer { value += 1 }
            return value
        }
    }
}

