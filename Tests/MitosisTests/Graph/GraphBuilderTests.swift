import Foundation
import Glibc
import Testing
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel

/// The graph of real scenario processes, asserted node by node and edge by edge. Descriptors 0–2
/// (the harness's pipes) are left out of the exact comparisons: they lead to the test process.
@Suite("GraphBuilder")
struct GraphBuilderTests {
    static let options = GraphOptions(includeDescendants: true, includeMappings: false)

    /// The nodes and edges about descriptors ≥ 3, processes and threads (not namespaces).
    static func core(_ graph: ResourceGraph) -> (nodes: Set<String>, edges: Set<String>) {
        let harness = Set(graph.edges.filter { $0.kind == .holds && (Int($0.attributes["fd"]?.description ?? "") ?? 99) < 3 }.map(\.to))
        let harnessObjects = Set(graph.edges.filter { $0.kind == .refersTo && harness.contains($0.from) }.map(\.to))
        let skipped = harness.union(harnessObjects)
        let nodes = graph.nodes.filter { !skipped.contains($0.id) && $0.kind != .namespace }.map(\.id)
        let edges = graph.edges.filter { !skipped.contains($0.from) && !skipped.contains($0.to) && $0.kind != .memberOf }.map { edge in
            let attributes = edge.attributes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            return "\(edge.from) \(edge.kind.rawValue) \(edge.to)" + (attributes.isEmpty ? "" : " {\(attributes)}")
        }
        return (Set(nodes), Set(edges))
    }

    @Test("a parent and child sharing a pipe, a socketpair and an eventfd description")
    func pairs() async throws {
        let child = try await ScenarioProcess("pairs")
        defer { child.stop() }
        let (p, c) = (child.pid, Int32(try child.intFact("child")))
        let pipe = try child.intFact("pipe_inode")
        let (s1, s2) = (try child.intFact("parent_socket"), try child.intFact("child_socket"))
        let before = try TargetHealth(pid: p)
        let graph = try GraphBuilder.graph(of: p, options: Self.options)
        let (nodes, edges) = Self.core(graph)
        #expect(nodes == [
            "process:\(p)", "process:\(c)", "thread:\(p)", "thread:\(c)", "address-space:\(p)", "address-space:\(c)",
            "description:\(p):3", "description:\(c):4", "pipe:\(pipe)",
            "description:\(p):5", "description:\(c):6", "socket:\(s1)", "socket:\(s2)",
            "description:\(p):7", "eventfd:\(p):7",
        ])
        let (low, high) = ("socket:\(min(s1, s2))", "socket:\(max(s1, s2))")
        #expect(edges == [
            "process:\(p) parent-of process:\(c)",
            "thread:\(p) thread-of process:\(p)", "thread:\(c) thread-of process:\(c)",
            "process:\(p) holds address-space:\(p)", "process:\(c) holds address-space:\(c)",
            "process:\(p) holds description:\(p):3 {cloexec=false,fd=3}",
            "process:\(p) holds description:\(p):5 {cloexec=false,fd=5}",
            "process:\(p) holds description:\(p):7 {cloexec=false,fd=7}",
            "process:\(c) holds description:\(c):4 {cloexec=false,fd=4}",
            "process:\(c) holds description:\(c):6 {cloexec=false,fd=6}",
            "process:\(c) holds description:\(p):7 {cloexec=false,fd=7}",
            "description:\(p):3 refers-to pipe:\(pipe)", "description:\(c):4 refers-to pipe:\(pipe)",
            "description:\(p):5 refers-to socket:\(s1)", "description:\(c):6 refers-to socket:\(s2)",
            "description:\(p):7 refers-to eventfd:\(p):7",
            "description:\(c):4 connected-to description:\(p):3",
            "\(low) connected-to \(high)",
            "process:\(p) shares process:\(c) {descriptions=description:\(p):7,what=descriptions}",
        ])
        let socket = try #require(graph.node("socket:\(s1)"))
        #expect(socket.attributes == [
            "inode": .int(Int64(s1)), "protocol": "unix", "type": "stream", "state": "ESTABLISHED",
            "shutdown": "none", "peer": .int(Int64(s2)), "recv_q": 0, "send_q": 0,
        ])
        #expect(graph.node("description:\(c):4")?.attributes == ["access": "O_WRONLY", "flags": .strings([]), "position": 0])
        // Both are in the same namespaces: one node per namespace, an edge from each process.
        let namespaces = graph.nodes(of: .namespace)
        #expect(namespaces.count == 8)
        #expect(graph.edges(of: .memberOf).count == 16)
        // Nothing inside the tree is external; the closure of the child alone reaches its parent.
        #expect(graph.closure(of: p).external.allSatisfy { $0.reason.contains("outside the graph") })
        let childClosure = graph.closure(of: c)
        #expect(childClosure.processes == [c])
        #expect(childClosure.external.map(\.id).sorted() == ["description:\(c):4", "description:\(p):7", "socket:\(s2)"].sorted())
        #expect(childClosure.external.first { $0.id == "socket:\(s2)" }?.reason
            == "connected to socket:\(s1) held by process:\(p), outside the closure")
        #expect(try TargetHealth(pid: p) == before)
    }

    @Test("a TCP server and client in one tree, and a client outside it")
    func tcp() async throws {
        let server = try await ScenarioProcess("tcp")
        defer { server.stop() }
        let (p, c) = (server.pid, Int32(try server.intFact("child")))
        let port = try server.fact("port"), clientPort = try server.fact("client_port")
        let (listen, accepted) = (try server.intFact("listen_inode"), try server.intFact("server_inode"))
        let outside = try await ScenarioProcess("tcpclient", [port])
        defer { outside.stop() }

        // The outside connection waits in the listener's queue: no descriptor holds it yet.
        var graph = try GraphBuilder.graph(of: p, options: Self.options)
        let clientSocket = try #require(graph.edges.first { $0.from == "description:\(c):4" && $0.kind == .refersTo }?.to)
        #expect(graph.node("socket:\(listen)")?.attributes == [
            "inode": .int(Int64(listen)), "protocol": "tcp", "family": "ipv4", "state": "LISTEN",
            "local": .string("127.0.0.1:\(port)"), "remote": "0.0.0.0:*", "recv_q": 1, "send_q": 16, "uid": 0,
        ])
        #expect(graph.node("socket:\(accepted)")?["remote"] == .string("127.0.0.1:\(clientPort)"))
        #expect(graph.node(clientSocket)?["local"] == .string("127.0.0.1:\(clientPort)"))
        #expect(graph.edges(of: .connectedTo) == [
            GraphEdge(from: min("socket:\(accepted)", clientSocket), to: max("socket:\(accepted)", clientSocket), kind: .connectedTo),
        ])
        #expect(graph.nodes(of: .socket).filter(\.isExternal).isEmpty)

        try await server.send("accept")
        let fd = try server.intFact("fd"), inode = try server.intFact("inode")
        let outsideInode = try outside.intFact("inode"), outsidePort = try outside.intFact("local_port")
        graph = try GraphBuilder.graph(of: p, options: Self.options)
        #expect(graph.edges.contains(GraphEdge(from: "process:\(p)", to: "description:\(p):\(fd)", kind: .holds,
                                                attributes: ["fd": .int(Int64(fd)), "cloexec": false])))
        let external = try #require(graph.node("socket:\(inode)"))
        #expect(external.isExternal)
        #expect(external["reason"] == .string("TCP peer 127.0.0.1:\(outsidePort) (socket:[\(outsideInode)]) is held by process \(outside.pid) (mitosis-scenari), outside the graph"))
        let closure = graph.closure(of: p)
        #expect(closure.external.filter { $0.kind == .socket }.map(\.id) == ["socket:\(inode)"])
        #expect(closure.processes == [p, c].sorted())
    }

    @Test("a FIFO end, a connected UDP peer and a SysV attachment held outside the tree, and a packet socket, are external",
          .enabled(if: geteuid() == 0, "a packet socket needs CAP_NET_RAW: run the suite as root"))
    func tiesOutside() async throws {
        let directory = NSTemporaryDirectory() + "mitosis-fifo-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fifo = directory + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let target = try await ScenarioProcess("ties", [fifo])
        defer { target.stop() }
        let p = target.pid
        func socket(_ fd: Int) throws -> String { "socket:\(try target.intFact("inode\(fd)"))" }
        let (udpA, udpB, udpC, packet) = (try socket(4), try socket(5), try socket(6), try socket(7))
        let (own, shared) = (try target.intFact("own_shmid"), try target.intFact("shared_shmid"))
        let fifoNode = "file:\(DeviceNumber(encoded: try Kernel.status(fifo).device)):\(try target.intFact("inode3"))"
        let options = GraphOptions(includeDescendants: true)
        let before = try TargetHealth(pid: p)
        let packetReason = "packet socket on every network interface: it sends and receives this host's raw network traffic"

        // Alone: only the packet socket ties the process to something outside; the UDP pair is
        // connected inside, the FIFO and both segments are its own.
        var graph = try GraphBuilder.graph(of: p, options: options)
        #expect(graph.node(fifoNode)?["path"] == .string(fifo))
        #expect(graph.node("sysv-segment:\(own)") != nil && graph.node("sysv-segment:\(shared)") != nil)
        #expect(graph.edges(of: .connectedTo).contains(GraphEdge(from: min(udpA, udpB), to: max(udpA, udpB), kind: .connectedTo)))
        #expect(graph.node(udpA)?["state"] == "ESTABLISHED")
        // The harness's pipes (fds 0–2) lead to the test process: left out.
        func externals(_ graph: ResourceGraph) -> [String: String] {
            Dictionary(uniqueKeysWithValues: graph.nodes.filter { $0.isExternal && $0.kind != .pipe }.map { ($0.id, $0["reason"]?.description ?? "") })
        }
        var external = externals(graph)
        #expect(external == [packet: packetReason])

        // A holder outside the tree: the FIFO's write end, the UDP peer of fd 6, an attachment.
        let holder = try await ScenarioProcess("tie-holder", [fifo, String(shared)])
        defer { holder.stop() }
        let (holderPort, holderInode) = (try holder.intFact("udp_port"), try holder.intFact("udp_inode"))
        try await target.send("connect \(holderPort)")
        graph = try GraphBuilder.graph(of: p, options: options)
        let name = "process \(holder.pid) (mitosis-scenari)"
        external = externals(graph)
        #expect(external == [
            packet: packetReason,
            fifoNode: "FIFO \(fifo) is also open in \(name), outside the graph",
            udpC: "UDP peer 127.0.0.1:\(holderPort) (socket:[\(holderInode)]) is held by \(name), outside the graph",
            "sysv-segment:\(shared)": "SysV segment \(shared) is also attached by \(name), outside the graph",
        ])
        #expect(graph.closure(of: p).external.filter { $0.kind != .pipe }.map(\.id) == external.keys.sorted())

        // Without the scan for holders, the segment is still external (the kernel's count tells).
        var quick = options
        quick.resolveOutsideHolders = false
        graph = try GraphBuilder.graph(of: p, options: quick)
        #expect(graph.node("sysv-segment:\(shared)")?["reason"] == .string("SysV segment \(shared) is also attached by 1 mapping(s), outside the graph"))
        // The holder inside the tree (a graph of both is not possible: they are not related), so
        // from the holder's side the target is what lies outside.
        graph = try GraphBuilder.graph(of: holder.pid, options: options)
        #expect(graph.node("socket:\(holderInode)")?.isExternal == false, "an unconnected UDP socket ties to nobody")
        #expect(graph.node("sysv-segment:\(shared)")?["reason"] == .string("SysV segment \(shared) is also attached by process \(p) (mitosis-scenari), outside the graph"))
        #expect(try TargetHealth(pid: p) == before)
    }

    @Test("an epoll watching a socket and an eventfd")
    func epoll() async throws {
        let child = try await ScenarioProcess("epoll")
        defer { child.stop() }
        let p = child.pid
        let (socket, peer) = (try child.intFact("socket"), try child.intFact("peer"))
        let graph = try GraphBuilder.graph(of: p, options: Self.options)
        let (nodes, edges) = Self.core(graph)
        #expect(nodes == [
            "process:\(p)", "thread:\(p)", "address-space:\(p)",
            "description:\(p):3", "epoll:\(p):3", "description:\(p):4", "socket:\(socket)",
            "description:\(p):5", "socket:\(peer)", "description:\(p):6", "eventfd:\(p):6",
        ])
        #expect(edges == [
            "thread:\(p) thread-of process:\(p)", "process:\(p) holds address-space:\(p)",
            "process:\(p) holds description:\(p):3 {cloexec=false,fd=3}",
            "process:\(p) holds description:\(p):4 {cloexec=false,fd=4}",
            "process:\(p) holds description:\(p):5 {cloexec=false,fd=5}",
            "process:\(p) holds description:\(p):6 {cloexec=false,fd=6}",
            "description:\(p):3 refers-to epoll:\(p):3", "description:\(p):4 refers-to socket:\(socket)",
            "description:\(p):5 refers-to socket:\(peer)", "description:\(p):6 refers-to eventfd:\(p):6",
            "socket:\(min(socket, peer)) connected-to socket:\(max(socket, peer))",
            "epoll:\(p):3 watches description:\(p):4 {events=EPOLLIN,EPOLLERR,EPOLLHUP,fd=4}",
            "epoll:\(p):3 watches description:\(p):6 {events=EPOLLIN,EPOLLERR,EPOLLHUP,fd=6}",
        ])
        #expect(graph.node("epoll:\(p):3")?["watches"] == 2)
    }

    @Test("a target in its own network namespace: its sockets are still found")
    func networkNamespace() async throws {
        let child = try await ScenarioProcess("netns", ["7778"])
        defer { child.stop() }
        let p = child.pid
        let (listen, client, server) = (try child.intFact("listen_inode"), try child.intFact("client_inode"), try child.intFact("server_inode"))
        let clientPort = try child.fact("client_port")
        let graph = try GraphBuilder.graph(of: p, options: Self.options)
        #expect(graph.node("socket:\(listen)")?["state"] == "LISTEN")
        #expect(graph.node("socket:\(listen)")?["local"] == "127.0.0.1:7778")
        #expect(graph.node("socket:\(client)")?["remote"] == "127.0.0.1:7778")
        #expect(graph.node("socket:\(server)")?["remote"] == .string("127.0.0.1:\(clientPort)"))
        #expect(graph.edges(of: .connectedTo) == [
            GraphEdge(from: "socket:\(min(client, server))", to: "socket:\(max(client, server))", kind: .connectedTo),
        ])
        let namespace = try #require(graph.edges.first { $0.from == "process:\(p)" && $0.to.hasPrefix("namespace:net:") }?.to)
        #expect(namespace != "namespace:net:\(try Kernel.status("/proc/self/ns/net").inode)")
    }
}

extension GraphValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}
