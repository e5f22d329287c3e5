import Foundation
import Glibc
import SystemPackage
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel

/// Debian's redis-server with three clients connected mid-session, each holding its own TCP
/// connection from a client "host": checkpointed with `dump --kill`, then restored on the same
/// host, or on another host that takes over the service address. Each client's next command on
/// its *same* connection gets the right answer, none sees a reset, and the last write before the
/// checkpoint is there. The hosts are network namespaces on a bridge (`BridgedHosts`); the
/// clients' sockets are this test's, made in the client host's namespace.
@Suite(.serialized) struct RedisLiveClientsTests {
    static let nsenter = "/usr/bin/nsenter"
    static let arping = "/usr/bin/arping"
    static let port: UInt16 = 6379

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: RedisRestoreTests.server), "needs Debian's redis-server (scripts/setup installs it)"))
    func clientsKeepTheirConnectionsWhenRedisIsRestoredOnTheSameHost() async throws {
        try await withHosts { hosts in try await liveClients(hosts, newHost: nil) }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: RedisRestoreTests.server) && FileManager.default.isExecutableFile(atPath: arping),
                   "needs Debian's redis-server and iputils-arping (scripts/setup installs them)"))
    func clientsKeepTheirConnectionsWhenRedisIsRestoredOnAnotherHostThatTakesTheAddress() async throws {
        try await withHosts { hosts in try await liveClients(hosts, newHost: 2) }
    }

    /// Hosts: 0 the clients', 1 redis's, 2 the other host; removed afterwards whatever happens.
    private func withHosts(_ body: (BridgedHosts) async throws -> Void) async throws {
        let hosts = try await BridgedHosts(["client", "a", "b"])
        do {
            try await body(hosts)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
        #expect(!hosts.hosts.contains { FileManager.default.fileExists(atPath: "/run/netns/" + $0) })
    }

    private func liveClients(_ hosts: BridgedHosts, newHost: Int?) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let service = "\(hosts.subnet).100"
        try await hosts.setAddress(service, on: 1, present: true)
        let config = """
            port \(Self.port)
            bind \(service)
            protected-mode no
            tcp-keepalive 1
            appendonly yes
            appendfsync everysec
            dir \(scratch.path)
            daemonize no
            save ""
            logfile \(scratch.path)/redis.log
            """
        try config.write(toFile: scratch.path + "/redis.conf", atomically: true, encoding: .utf8)
        // nsenter execs redis in place (its pid is redis's) in host a's network namespace only.
        let original = try ChildProcess(executable: Self.nsenter, arguments: ["--net=\(hosts.path(1))", "--", RedisRestoreTests.server, scratch.path + "/redis.conf"],
                                        stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let pid = original.pid
        var killed = false
        defer { if !killed { original.kill() } else { kill(pid, SIGKILL) } }

        // Three clients mid-session: one in database 5, one named, one inside a transaction.
        let clients = try await Blocking.run("redis-clients") { () throws -> Clients in
            Clients(try (0..<4).map { _ in try Self.connect(from: hosts, to: service) })
        }
        let last = "last-" + UUID().uuidString
        let setup = try await Blocking.run("redis-session") { () throws -> [[RedisClient.Reply]] in
            [try clients[0].pipeline([["SELECT", "5"], ["SET", "k1", "v1"]]),
             try clients[1].pipeline([["CLIENT", "SETNAME", "second"], ["SET", "k2", "v2"]]),
             try clients[2].pipeline([["MULTI"], ["SET", "k3", "v3"], ["INCR", "counter"]]),
             try clients[3].pipeline([["PING"]]),
             // The last write before the checkpoint.
             try clients[1].pipeline([["SET", "last", last]])]
        }
        #expect(setup[0] == [.simple("OK"), .simple("OK")] && setup[1] == [.simple("OK"), .simple("OK")])
        #expect(setup[2] == [.simple("OK"), .simple("QUEUED"), .simple("QUEUED")] && setup[4] == [.simple("OK")])
        let ports = clients.map { Self.localPort($0.socketDescriptor) }

        let images = scratch.path + "/images"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(pid), "--images", images, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        _ = try await Blocking.run("redis-reap") { original.wait() }
        killed = true
        let held = try #require(try CheckpointImage.open(images).manifest.restore?.networkLockTable)
        #expect(try await hosts.tables(1) == ["table inet \(held)"])
        // The fourth client's peer goes away while redis is down: its socket closes with a reset
        // (SO_LINGER 0), which the held lock drops. At the restore its connection is rebuilt
        // like the others; the window probe that ends repair mode meets the restore's own lock,
        // so redis learns that the peer is gone from the first segment it sends afterwards:
        // here a keepalive probe (`tcp-keepalive 1`), answered with a reset.
        try clients[3].abort()

        var host = 1
        if let newHost {
            // The other host takes the service address before the restore binds to it.
            try await hosts.setAddress(service, on: 1, present: false)
            try await hosts.setAddress(service, on: newHost, present: true)
            host = newHost
            // The port taken on the new host: one line, no process, no lock of the restore's own.
            let squatter = try Self.listen(in: hosts, host: newHost, on: service)
            let refused = try await ToolRun(ToolRun.mitosis, ["restore", images, "--netns", hosts.hosts[host]])
            close(squatter)
            #expect(refused.status == 1 && refused.standardError.split(separator: "\n").count == 1, "\(refused.standardError)")
            #expect(refused.standardError.hasPrefix("mitosis: restore failed while binding the TCP socket of fd ")
                    && refused.standardError.contains("to \(service):\(Self.port): Address already in use"), "\(refused.standardError)")
            try await Self.awaitGone(pid, hosts: hosts, host: host)
            // kill -9 of the restorer at two moments — once its lock is in force in the new
            // host, and once the husk exists there — leaves no process, no lock of its own.
            for moment in ["lock", "husk"] {
                let attempt = try ToolRun.start(ToolRun.mitosis, ["restore", images, "--netns", hosts.hosts[host]])
                for _ in 0..<5000 {
                    if moment == "husk" ? Self.restoredProcessExists(pid, hosts: hosts, host: host)
                        : try await hosts.tables(host).contains(where: { $0.contains("mitosis-lock") }) { break }
                    try await Task.sleep(for: .milliseconds(1))
                }
                attempt.kill()
                let status = try await Blocking.run("restore-reap") { attempt.wait() }
                if ChildProcess.exitCode(of: status) == 0 {
                    // A loaded machine let the restore finish before the kill landed: nothing was
                    // killed halfway. The restored redis is ended, and the next moment tried.
                    print("kill -9 at '\(moment)': the restore had finished first")
                    kill(pid, SIGKILL)
                }
                try await Self.awaitGone(pid, hosts: hosts, host: host)
            }
        }
        let restore = try await ToolRun(ToolRun.mitosis, ["restore", images, "--netns", hosts.hosts[host]])
        #expect(restore.status == 0, "\(restore.standardError)")
        #expect(restore.standardOutput.contains("in network namespace \(hosts.hosts[host])") && !restore.standardOutput.contains("time namespace"),
                "\(restore.standardOutput)")
        if let newHost { try await hosts.announce(service, from: newHost) }
        #expect(try Kernel.readLink("/proc/\(pid)/ns/net") == (try await hosts.namespaceLink(host)))

        // Each client's next command on its same connection.
        let after = try await Blocking.run("redis-after") { () throws -> [[RedisClient.Reply]] in
            [try clients[0].pipeline([["GET", "k1"], ["DBSIZE"]]),
             try clients[1].pipeline([["CLIENT", "GETNAME"], ["GET", "k2"]]),
             try clients[2].pipeline([["EXEC"], ["GET", "last"], ["GET", "k3"]])]
        }
        #expect(after[0] == [.bulk(Array("v1".utf8)), .integer(1)], "\(after[0])")
        #expect(after[1] == [.bulk(Array("second".utf8)), .bulk(Array("v2".utf8))], "\(after[1])")
        #expect(after[2] == [.array([.simple("OK"), .integer(1)]), .bulk(Array(last.utf8)), .bulk(Array("v3".utf8))], "\(after[2])")
        #expect(clients[0..<3].map { Self.localPort($0.socketDescriptor) } == Array(ports[0..<3]), "the same connections")

        // redis dropped the client whose peer was gone: three clients left, plus a new one that
        // connects to the restored listener.
        let list = try await Self.awaitClientCount(3, from: hosts, to: service)
        #expect(!list.contains(":\(ports[3]) "), "\(list)")
        // No lock left where the process now runs (the held one stays with host a, the
        // original host, when the process moved: it goes with that host).
        #expect(try await hosts.tables(host).isEmpty)
        if newHost != nil { #expect(try await hosts.tables(1) == ["table inet \(held)"]) }
    }

    /// The test's clients, handed to the blocking threads that talk to redis one at a time.
    final class Clients: @unchecked Sendable {
        let list: [RedisClient]
        init(_ list: [RedisClient]) { self.list = list }
        subscript(index: Int) -> RedisClient { list[index] }
        subscript(range: Range<Int>) -> ArraySlice<RedisClient> { list[range] }
        func map<T>(_ transform: (RedisClient) -> T) -> [T] { list.map(transform) }
    }

    /// A client socket made in the client host's namespace and connected to the service.
    /// Receive and send time out after 30 s, so that a connection left locked fails the test
    /// instead of hanging it.
    static func connect(from hosts: BridgedHosts, to address: String) throws -> RedisClient {
        let fd = try Kernel.inNetworkNamespace(named: hosts.hosts[0]) { () throws(Errno) -> Int32 in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Errno(rawValue: errno) }
            return fd
        }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = port.bigEndian
        inet_pton(AF_INET, address, &target.sin_addr)
        for _ in 0..<500 {
            let result = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if result == 0 { return RedisClient(connected: fd) }
            usleep(10_000)  // redis is still starting
        }
        close(fd)
        throw RestoreFailure(description: "redis did not answer on \(address):\(port)")
    }

    /// A listening socket on `address:port` in host `host`'s namespace (a port taken there).
    static func listen(in hosts: BridgedHosts, host: Int, on address: String) throws -> Int32 {
        let fd = try Kernel.inNetworkNamespace(named: hosts.hosts[host]) { () throws(Errno) -> Int32 in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Errno(rawValue: errno) }
            return fd
        }
        var target = sockaddr_in()
        target.sin_family = sa_family_t(AF_INET)
        target.sin_port = port.bigEndian
        inet_pton(AF_INET, address, &target.sin_addr)
        let bound = withUnsafePointer(to: &target) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 1) == 0 else {
            close(fd)
            throw RestoreFailure(description: "cannot listen on \(address):\(port): errno \(errno)")
        }
        return fd
    }

    /// Whether a process with `pid` lives in the network namespace of `host`, where the restore
    /// creates its husk. Elsewhere, a process with that pid is another test's: a parallel run
    /// reuses the freed pid of the killed redis.
    static func restoredProcessExists(_ pid: Int32, hosts: BridgedHosts, host: Int) -> Bool {
        guard let namespace = try? Kernel.status("/run/netns/" + hosts.hosts[host]),
              let link = try? Kernel.readLink("/proc/\(pid)/ns/net") else { return false }
        return link == "net:[\(namespace.inode)]"
    }

    static func localPort(_ fd: Int32) -> UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return UInt16(bigEndian: address.sin_port)
    }

    /// `CLIENT LIST` from a new connection until it shows `count` other clients.
    static func awaitClientCount(_ count: Int, from hosts: BridgedHosts, to address: String) async throws -> String {
        var list = ""
        for _ in 0..<200 {
            list = try await Blocking.run("redis-list") { () throws -> String in
                guard case .bulk(let bytes?) = try Self.connect(from: hosts, to: address).call("CLIENT", "LIST") else { return "" }
                return String(decoding: bytes, as: UTF8.self)
            }
            if list.split(separator: "\n").count == count + 1 { return list }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw RestoreFailure(description: "redis has not \(count) clients: \(list)")
    }

    /// After a killed restore: no process with the pid, no lock of the restore's own in the host.
    /// The husk, killed with its tracer (`PTRACE_O_EXITKILL`), is an orphan that init reaps:
    /// its pid must be free again before the next restore.
    static func awaitGone(_ pid: Int32, hosts: BridgedHosts, host: Int) async throws {
        for _ in 0..<600 {
            let tables = try await hosts.tables(host)
            if !restoredProcessExists(pid, hosts: hosts, host: host), !tables.contains(where: { $0.contains("mitosis-lock") }) { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw RestoreFailure(description: "a killed restore left process \(pid) or a lock: \(try await hosts.tables(host))")
    }
}
