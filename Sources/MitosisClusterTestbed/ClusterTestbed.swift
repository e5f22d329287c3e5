import Foundation
import MitosisCluster
import NIOPosix
import MitosisKernel

/// Three "hosts" and a "client" as network namespaces on a bridge, and a real 3-member etcd
/// cluster, one member per host namespace.
///
/// Every address lives inside namespaces this testbed creates: the bridge itself sits in a
/// "switch" namespace of its own, so the test machine's namespace gains no interface, route or
/// address. `withClusterTestbed` removes everything (processes, namespaces with their links,
/// the temporary directory) on every path, failure included; a testbed left by a killed test
/// process is swept by the next one (names carry the creating pid).
package final class ClusterTestbed: @unchecked Sendable {
    package static let subnet = "10.231.0"
    /// The service address that moves between hosts.
    package static let serviceAddress = "10.231.0.100"

    package let tag: String
    package let directory: String
    package var switchNamespace: String { "\(tag)-sw" }
    package var clientNamespace: String { "\(tag)-c" }
    package func hostNamespace(_ host: Int) -> String { "\(tag)-h\(host)" }
    /// The host's end of its link, on the bridge (down = host cut off).
    package func bridgePort(_ host: Int) -> String { "\(tag)h\(host)" }
    package func hostAddress(_ host: Int) -> String { "\(Self.subnet).\(host + 1)" }
    package var clientAddress: String { "\(Self.subnet).200" }
    package func etcdEndpoint(_ host: Int) -> EtcdEndpoint { EtcdEndpoint(host: hostAddress(host), port: 2379) }
    package var etcdEndpoints: [EtcdEndpoint] { (0..<3).map(etcdEndpoint) }

    package private(set) var etcd: [ChildProcess?] = [nil, nil, nil]
    private var namespaces: [String] = []
    /// Event loop groups whose threads live in a namespace, one per namespace asked.
    private var groups: [String: MultiThreadedEventLoopGroup] = [:]
    private let lock = NSLock()

    private static let counter = Counter()

    private init() {
        tag = "mct\(ProcessInfo.processInfo.processIdentifier)x\(Self.counter.next())"
        directory = NSTemporaryDirectory() + "mitosis-cluster-\(tag)"
    }

    /// Builds the namespaces and links and starts etcd on the three hosts.
    package static func make(heartbeatMilliseconds: Int = 50, electionMilliseconds: Int = 500) async throws -> ClusterTestbed {
        await sweepStale()
        let bed = ClusterTestbed()
        do {
            try FileManager.default.createDirectory(atPath: bed.directory, withIntermediateDirectories: true)
            try await bed.addNamespace(bed.switchNamespace)
            try await ip(["-n", bed.switchNamespace, "link", "add", "br0", "type", "bridge"])
            try await ip(["-n", bed.switchNamespace, "link", "set", "br0", "up"])
            for host in 0..<3 {
                try await bed.attach(bed.hostNamespace(host), port: bed.bridgePort(host), address: bed.hostAddress(host))
            }
            try await bed.attach(bed.clientNamespace, port: "\(bed.tag)c", address: bed.clientAddress)
            for host in 0..<3 {
                try bed.startEtcd(host, heartbeat: heartbeatMilliseconds, election: electionMilliseconds)
            }
            try await bed.waitForQuorum()
        } catch {
            await bed.teardown()
            throw error
        }
        return bed
    }

    /// A client of the etcd cluster whose connections start in `namespace` (the client's by default).
    package func etcdClient(endpoints: [EtcdEndpoint]? = nil, in namespace: String? = nil,
                    timeout: Duration = .milliseconds(300)) throws -> EtcdClient {
        EtcdClient(endpoints: endpoints ?? etcdEndpoints, group: try group(in: namespace ?? clientNamespace), requestTimeout: timeout)
    }

    /// An event loop group whose threads were started inside `namespace`: the sockets its
    /// channels open belong to that namespace (NIO opens a client socket on its event loop).
    package func group(in namespace: String) throws -> MultiThreadedEventLoopGroup {
        try lock.withLock {
            if let group = groups[namespace] { return group }
            let group = try Kernel.inNetworkNamespace(named: namespace) { MultiThreadedEventLoopGroup(numberOfThreads: 1) }
            groups[namespace] = group
            return group
        }
    }

    /// Cuts `host` off the bridge (or reconnects it): a partition of that host from everyone.
    package func setLink(_ host: Int, up: Bool) async throws {
        try await Self.ip(["-n", switchNamespace, "link", "set", bridgePort(host), up ? "up" : "down"])
    }

    /// Stops or restarts host `host`'s etcd member (SIGKILL, then a start on the same data).
    package func killEtcd(_ host: Int) {
        etcd[host]?.kill()
        etcd[host] = nil
    }

    /// Runs `command` inside `namespace` to completion.
    @discardableResult
    package func run(in namespace: String, _ command: [String]) async throws -> CommandResult {
        try await CommandResult.run("/usr/bin/ip", ["netns", "exec", namespace] + command)
    }

    package func teardown() async {
        for host in 0..<3 { killEtcd(host) }
        let loops = lock.withLock {
            defer { groups = [:] }
            return Array(groups.values)
        }
        for group in loops { try? await group.shutdownGracefully() }
        await Self.removeNamespaces(namespaces.reversed())
        namespaces = []
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: Building

    private func addNamespace(_ name: String) async throws {
        try await Self.ip(["netns", "add", name])
        namespaces.append(name)
        try await Self.ip(["-n", name, "link", "set", "lo", "up"])
    }

    private func attach(_ namespace: String, port: String, address: String) async throws {
        try await addNamespace(namespace)
        try await Self.ip(["-n", switchNamespace, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace])
        try await Self.ip(["-n", switchNamespace, "link", "set", port, "master", "br0", "up"])
        try await Self.ip(["-n", namespace, "addr", "add", "\(address)/24", "dev", "eth0"])
        try await Self.ip(["-n", namespace, "link", "set", "eth0", "up"])
    }

    package func startEtcd(_ host: Int, heartbeat: Int = 50, election: Int = 500) throws {
        let cluster = (0..<3).map { "h\($0)=http://\(hostAddress($0)):2380" }.joined(separator: ",")
        let address = hostAddress(host)
        let log = "\(directory)/etcd-h\(host).log"
        let command = ["/usr/bin/ip", "netns", "exec", hostNamespace(host), "/usr/bin/etcd",
                       "--name", "h\(host)", "--data-dir", "\(directory)/h\(host)",
                       "--listen-peer-urls", "http://\(address):2380", "--initial-advertise-peer-urls", "http://\(address):2380",
                       "--listen-client-urls", "http://\(address):2379", "--advertise-client-urls", "http://\(address):2379",
                       "--initial-cluster", cluster, "--initial-cluster-state", "new", "--initial-cluster-token", tag,
                       "--heartbeat-interval", "\(heartbeat)", "--election-timeout", "\(election)",
                       // A member coming back from a partition does not depose a working leader.
                       "--pre-vote",
                       "--logger", "zap", "--log-outputs", "stderr"]
        // `ip netns exec` execs etcd in place, so the child's pid is etcd's. Its log goes to a file.
        etcd[host] = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exec \"$@\" >>\(log) 2>&1", "sh"] + command,
                                      stdin: .null, stdout: .null, stderr: .null)
    }

    /// Waits until a linearizable read succeeds (a leader is elected and has quorum).
    package func waitForQuorum(through given: EtcdClient? = nil, timeout: Duration = .seconds(20)) async throws {
        let client = try given ?? etcdClient()
        let deadline = ContinuousClock.now + timeout
        var lastError: any Error = EtcdError.noEndpoint
        while ContinuousClock.now < deadline {
            do {
                _ = try await client.get("/testbed/probe")
                return
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        throw TestbedError("etcd has no quorum after \(timeout): \(lastError); logs in \(directory)")
    }

    // MARK: Cleaning

    package static func ip(_ arguments: [String]) async throws {
        let run = try await CommandResult.run("/usr/bin/ip", arguments)
        guard run.status == 0 else { throw TestbedError("ip \(arguments.joined(separator: " ")): \(run.standardError)") }
    }

    /// Kills what runs in each namespace, then deletes it (its links go with it).
    private static func removeNamespaces(_ names: [String]) async {
        for name in names {
            if let pids = try? await CommandResult.run("/usr/bin/ip", ["netns", "pids", name]) {
                for pid in pids.standardOutput.split(separator: "\n").compactMap({ Int32($0) }) {
                    try? Kernel.sendSignal(pid: pid, 9)
                }
            }
            _ = try? await CommandResult.run("/usr/bin/ip", ["netns", "del", name])
        }
    }

    /// Removes testbeds whose creating test process is gone.
    private static func sweepStale() async {
        guard let list = try? await CommandResult.run("/usr/bin/ip", ["netns", "list"]) else { return }
        let stale = list.standardOutput.split(separator: "\n").compactMap { line -> String? in
            let name = String(line.split(separator: " ").first ?? "")
            guard name.hasPrefix("mct"), let pid = Int32(name.dropFirst(3).prefix { $0.isNumber }),
                  pid != ProcessInfo.processInfo.processIdentifier, !FileManager.default.fileExists(atPath: "/proc/\(pid)") else {
                return nil
            }
            return name
        }
        await removeNamespaces(stale)
    }
}

/// Runs `body` with a fresh testbed and removes it afterwards, whatever happens.
package func withClusterTestbed<T>(_ body: (ClusterTestbed) async throws -> T) async throws -> T {
    let bed = try await ClusterTestbed.make()
    do {
        let result = try await body(bed)
        await bed.teardown()
        return result
    } catch {
        await bed.teardown()
        throw error
    }
}

package struct TestbedError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}

/// One run of a tool to completion, its output collected on a thread of its own.
package struct CommandResult: Sendable {
    /// The exit code, or 128 + the signal that killed the tool.
    package let status: Int32
    package let standardOutput: String
    package let standardError: String

    package static func run(_ executable: String, _ arguments: [String]) async throws -> CommandResult {
        let child = try ChildProcess(executable: executable, arguments: arguments, stdin: .null, stdout: .pipe, stderr: .pipe)
        return try await Blocking.run("testbed-tool") {
            let (output, errorOutput) = child.readToEnd()
            let status = child.wait()
            return CommandResult(status: ChildProcess.exitCode(of: status), standardOutput: String(decoding: output, as: UTF8.self),
                                 standardError: String(decoding: errorOutput, as: UTF8.self))
        }
    }
}

private final class Counter: @unchecked Sendable {
    private var value = 0
    private let lock = NSLock()
    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}
