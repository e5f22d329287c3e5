import Foundation
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
    /// Each start of a host gets its own pid range (`ns_last_pid`), so that the service's pid,
    /// taken in the range of the host that first started it, is free on every other host. The
    /// first range is used once: the service's pid lives there for good.
    private let ranges = RangeCounter()

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
        let start = ranges.next()
        let range = start == 0 ? 1000 : 1000 + 5000 * (1 + (start - 1) % 5)
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

