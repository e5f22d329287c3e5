import Foundation
import MitosisCluster
import MitosisModel
import Testing

@Suite("Cluster configuration")
struct ClusterConfigTests {
    static let validText = """
    {"service": "web", "node": "a", "etcd": ["http://10.231.0.1:2379", "10.231.0.2:2379"],
     "replicationAddress": "10.231.0.1:7100", "start": ["/usr/bin/redis-server", "--port", "6379"],
     "address": {"cidr": "10.231.0.100/24", "device": "eth0"},
     "replication": {"directory": "/var/lib/mitosis/web", "data": ["/var/lib/web"], "intervalMilliseconds": 100},
     "timings": {"leaseTTLSeconds": 2, "keepaliveMilliseconds": 400}}
    """

    @Test("a valid configuration is read exactly")
    func valid() throws {
        let config = try ClusterConfig.parse(Array(Self.validText.utf8))
        #expect(config.service == "web" && config.node == "a")
        #expect(config.etcd == [EtcdEndpoint(host: "10.231.0.1", port: 2379), EtcdEndpoint(host: "10.231.0.2", port: 2379)])
        #expect(config.start == ["/usr/bin/redis-server", "--port", "6379"])
        #expect(config.address == HostAddress(cidr: "10.231.0.100/24", device: "eth0"))
        #expect(config.timings.leaseTTL == .seconds(2) && config.timings.keepaliveInterval == .milliseconds(400))
        #expect(config.timings.requestTimeout == ElectionTimings().requestTimeout)
        var replication = ReplicationSettings(directory: "/var/lib/mitosis/web")
        replication.dataDirectories = ["/var/lib/web"]
        replication.interval = .milliseconds(100)
        #expect(config.replication == replication)
    }

    /// Each edit of the valid file and the words its one error must contain.
    static let brokenCases: [(String, String, String)] = [
        ("\"service\": \"web\"", "\"service\": \"Web Server\"", "service"),
        ("\"node\": \"a\"", "\"node\": \"../a\"", "node"),
        ("\"node\": \"a\"", "\"node\": 7", "node"),
        ("\"etcd\": [", "\"etcd\": [\"https://x:1\", ", "etcd"),
        ("[\"http://10.231.0.1:2379\", \"10.231.0.2:2379\"]", "[]", "etcd"),
        ("\"replicationAddress\": \"10.231.0.1:7100\"", "\"replicationAddress\": \"10.231.0.1\"", "replicationAddress"),
        ("\"/usr/bin/redis-server\"", "\"redis-server\"", "absolute"),
        ("[\"/usr/bin/redis-server\", \"--port\", \"6379\"]", "[]", "start"),
        ("\"10.231.0.100/24\"", "\"10.231.0.300/24\"", "cidr"),
        ("\"10.231.0.100/24\"", "\"10.231.0.100\"", "cidr"),
        ("\"eth0\"", "\"eth0; reboot\"", "device"),
        ("\"leaseTTLSeconds\": 2", "\"leaseTTLSeconds\": 0", "leaseTTLSeconds"),
        ("\"leaseTTLSeconds\": 2", "\"leaseTTLSeconds\": true", "leaseTTLSeconds"),
        ("\"leaseTTLSeconds\": 2", "\"leaseTTLSeconds\": 1.5", "leaseTTLSeconds"),
        ("\"keepaliveMilliseconds\": 400", "\"keepaliveMilliseconds\": 900", "must fit in the lease TTL"),
        ("\"keepaliveMilliseconds\": 400", "\"keepaliveMiliseconds\": 400", "unknown key"),
        ("\"service\": \"web\",", "\"service\": \"web\", \"extra\": 1,", "unknown key"),
        ("\"/var/lib/mitosis/web\"", "\"mitosis/web\"", "replication.directory"),
        ("[\"/var/lib/web\"]", "[\"/var/lib/../etc\"]", "replication.data"),
        ("\"intervalMilliseconds\": 100", "\"intervalMilliseconds\": 0", "replication.intervalMilliseconds"),
    ]

    @Test("each broken field gives one error naming it", arguments: 0..<brokenCases.count)
    func broken(_ index: Int) {
        let (from, to, words) = Self.brokenCases[index]
        #expect(Self.validText.contains(from))
        let text = Self.validText.replacingOccurrences(of: from, with: to)
        #expect(throws: ConfigError.self) { try ClusterConfig.parse(Array(text.utf8)) }
        do {
            _ = try ClusterConfig.parse(Array(text.utf8))
        } catch {
            #expect("\(error)".contains(words), "case \(index): \(error)")
        }
    }

    @Test("garbage, wrong shapes and oversized files are refused")
    func garbage() throws {
        for text in ["", "null", "[]", "\"a\"", "{", String(repeating: "[", count: 10_000), "{\"service\": {}}"] {
            #expect(throws: ConfigError.self) { try ClusterConfig.parse(Array(text.utf8)) }
        }
        #expect(throws: ConfigError.self) { try ClusterConfig.parse(Array(repeating: 0x20, count: ClusterConfig.maximumBytes + 1)) }
        let path = NSTemporaryDirectory() + "mitosis-cluster-config-\(ProcessInfo.processInfo.processIdentifier).json"
        try Data(repeating: 0x20, count: ClusterConfig.maximumBytes * 4).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: ConfigError.self) { try ClusterConfig.load(path: path) }
        #expect(throws: ConfigError.self) { try ClusterConfig.load(path: "/nonexistent/cluster.json") }
    }

    @Test("the cluster's errors are MitosisFailures: one line, a stable code")
    func errorFamily() {
        let failures: [(any MitosisFailure, String)] = [
            (EtcdError.noEndpoint, "etcd.noEndpoint"),
            (EtcdError.leaseExpired(id: 7), "etcd.leaseExpired"),
            (EtcdError.timedOut(endpoint: "http://a:1", operation: "kv/range", milliseconds: 150), "etcd.timedOut"),
            (EtcdError.malformed(endpoint: "http://a:1", operation: "kv/range", reason: "not JSON"), "etcd.malformed"),
            (configError(), "config.invalid"),
            (ClusterError.serviceExited(command: "/bin/false", status: 1), "cluster.serviceExited"),
            (ClusterError.address(cidr: "10.0.0.1/24", device: "eth0", reason: "x"), "cluster.address"),
        ]
        for (failure, code) in failures {
            #expect(failure.code == code)
            #expect(!failure.summary.contains("\n") && failure.summary == failure.description)
        }
        #expect(EtcdError.domain == "etcd" && ConfigError.domain == "config" && ClusterError.domain == "cluster" && MemberRecordError.domain == "member")
    }

    /// The error an empty configuration gives.
    private func configError() -> any MitosisFailure {
        do {
            _ = try ClusterConfig.parse([])
        } catch let error as ConfigError {
            return error
        } catch {}
        return EtcdError.noEndpoint  // not reached: the code check then fails
    }
}
