import Foundation
import Testing
@testable import MitosisInspect
@testable import MitosisModel

/// Closure, diff and renderings on graphs built by hand.
@Suite("GraphModel")
struct GraphModelTests {
    /// Parent 10 with child 11; a pipe from 11 to 10; 11's socket is connected to 12, outside.
    static let tree = ResourceGraph(
        nodes: [
            GraphNode(id: "process:10", kind: .process, attributes: ["pid": 10, "comm": "server"]),
            GraphNode(id: "process:11", kind: .process, attributes: ["pid": 11, "comm": "worker"]),
            GraphNode(id: "thread:11", kind: .thread, attributes: ["tid": 11]),
            GraphNode(id: "description:10:3", kind: .description, attributes: ["access": "O_RDONLY", "position": 0]),
            GraphNode(id: "description:11:4", kind: .description, attributes: ["access": "O_WRONLY", "position": 0]),
            GraphNode(id: "description:11:5", kind: .description, attributes: ["access": "O_RDWR", "position": 0]),
            GraphNode(id: "pipe:100", kind: .pipe, attributes: ["inode": 100]),
            GraphNode(id: "socket:200", kind: .socket, attributes: [
                "inode": 200, "protocol": "tcp", "state": "ESTABLISHED", "local": "127.0.0.1:80", "remote": "127.0.0.1:5000",
                "external": true, "reason": "TCP peer 127.0.0.1:5000 is held by process 12 (client), outside the graph",
            ]),
            GraphNode(id: "namespace:net:1", kind: .namespace, attributes: ["type": "net", "inode": 1]),
        ],
        edges: [
            GraphEdge(from: "process:10", to: "process:11", kind: .parentOf),
            GraphEdge(from: "thread:11", to: "process:11", kind: .threadOf),
            GraphEdge(from: "process:10", to: "description:10:3", kind: .holds, attributes: ["fd": 3]),
            GraphEdge(from: "process:11", to: "description:11:4", kind: .holds, attributes: ["fd": 4]),
            GraphEdge(from: "process:11", to: "description:11:5", kind: .holds, attributes: ["fd": 5]),
            GraphEdge(from: "description:10:3", to: "pipe:100", kind: .refersTo),
            GraphEdge(from: "description:11:4", to: "pipe:100", kind: .refersTo),
            GraphEdge(from: "description:11:5", to: "socket:200", kind: .refersTo),
            GraphEdge(from: "description:11:4", to: "description:10:3", kind: .connectedTo),
            GraphEdge(from: "process:10", to: "namespace:net:1", kind: .memberOf),
            GraphEdge(from: "process:11", to: "namespace:net:1", kind: .memberOf),
        ])

    @Test("the closure of the root holds the whole tree; only the marked socket is external")
    func rootClosure() {
        let closure = Self.tree.closure(of: 10)
        #expect(closure.processes == [10, 11])
        #expect(closure.resources == Self.tree.nodes.map(\.id))
        #expect(closure.external == [ExternalResource(
            id: "socket:200", kind: .socket, reason: "TCP peer 127.0.0.1:5000 is held by process 12 (client), outside the graph")])
    }

    @Test("the closure of a child marks what ties it to its parent")
    func childClosure() {
        let closure = Self.tree.closure(of: 11)
        #expect(closure.processes == [11])
        #expect(closure.resources == ["description:11:4", "description:11:5", "namespace:net:1", "pipe:100",
                                      "process:11", "socket:200", "thread:11"])
        // The write end is what reaches the parent; the pipe itself is reached through it.
        #expect(closure.external.map(\.id) == ["description:11:4", "socket:200"])
        #expect(closure.external[0].reason == "connected to description:10:3 held by process:10, outside the closure")
    }

    @Test("an unknown root has an empty closure")
    func unknownRoot() {
        let closure = Self.tree.closure(of: 99)
        #expect(closure.processes.isEmpty && closure.resources.isEmpty && closure.external.isEmpty)
    }

    @Test("diff: added, removed and changed nodes and edges")
    func diff() {
        var nodes = Self.tree.nodes.filter { $0.id != "thread:11" }
        nodes[nodes.firstIndex { $0.id == "description:10:3" }!].attributes["position"] = 42
        nodes.append(GraphNode(id: "eventfd:10:6", kind: .eventfd, attributes: ["counter": 1]))
        var edges = Self.tree.edges.filter { $0.kind != .threadOf }
        edges.append(GraphEdge(from: "process:10", to: "eventfd:10:6", kind: .holds, attributes: ["fd": 6]))
        let after = ResourceGraph(nodes: nodes, edges: edges)
        let diff = GraphDiff(from: Self.tree, to: after)
        #expect(diff.addedNodes.map(\.id) == ["eventfd:10:6"])
        #expect(diff.removedNodes.map(\.id) == ["thread:11"])
        #expect(diff.changedNodes.map(\.after.id) == ["description:10:3"])
        #expect(diff.changedNodes.first?.before["position"] == 0)
        #expect(diff.addedEdges == [GraphEdge(from: "process:10", to: "eventfd:10:6", kind: .holds, attributes: ["fd": 6])])
        #expect(diff.removedEdges == [GraphEdge(from: "thread:11", to: "process:11", kind: .threadOf)])
        #expect(diff.records.map(\.change) == [.removed, .removed, .added, .changed, .added])
        #expect(GraphDiff(from: after, to: after).isEmpty)
    }

    @Test("JSON: attributes flattened beside id/kind and from/to/kind, round trip through the shared coders")
    func json() throws {
        let text = try JSONOutput.string(Self.tree, pretty: false)
        #expect(text.contains(#"{"id":"pipe:100","inode":100,"kind":"pipe"}"#))
        #expect(text.contains(#"{"fd":3,"from":"process:10","kind":"holds","to":"description:10:3"}"#))
        let decoded = try JSONOutput.decoder().decode(ResourceGraph.self, from: Data(text.utf8))
        #expect(decoded == Self.tree)
        let record = try JSONOutput.string(GraphChange(change: .added, edge: Self.tree.edges[0]), pretty: false)
        #expect(record == #"{"change":"added","edge":{"from":"description:10:3","kind":"refers-to","to":"pipe:100"}}"#)
    }

    @Test("DOT: one cluster per process, labelled edges, external nodes in red")
    func dot() {
        let dot = Self.tree.dot()
        #expect(dot.hasPrefix("digraph mitosis {"))
        #expect(dot.components(separatedBy: "subgraph cluster_").count == 3)
        #expect(dot.contains(#""process:10" -> "description:10:3" [label="holds fd 3"];"#))
        #expect(dot.contains(#""socket:200" [label="socket\ntcp ESTABLISHED 127.0.0.1:80 → 127.0.0.1:5000\nexternal: "#))
        #expect(dot.contains("color=red"))
    }

    @Test("text: each process with its descriptors, then edges and external resources")
    func text() {
        let text = Self.tree.text()
        #expect(text.contains("process 11 (worker)\n  threads: 11\n  fd 4: O_WRONLY pos 0 → pipe:[100]\n"))
        #expect(text.contains("external:\n  tcp ESTABLISHED 127.0.0.1:80 → 127.0.0.1:5000: TCP peer"))
    }
}

@Suite("ProcMountinfo")
struct ProcMountinfoTests {
    @Test("parses mounts, optional fields and octal escapes; skips malformed lines")
    func parse() {
        let text = """
            22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
            30 22 0:26 / /dev/shm rw,nosuid,nodev shared:4 master:2 - tmpfs tmpfs rw
            31 22 0:27 /sub /mnt/with\\040space rw - tmpfs none\\134x rw
            garbage line
            32 22 x:y / /bad rw - ext4 /dev/x rw
            33 22 0:28 / /truncated rw -
            """
        let mounts = ProcMountinfo.parse(text)
        #expect(mounts.count == 3)
        #expect(mounts[0] == MountInfo(mountId: 22, parentId: 1, device: DeviceNumber(major: 254, minor: 1), root: "/",
                                       mountPoint: "/", fileSystemType: "ext4", source: "/dev/vda1"))
        #expect(mounts[1].fileSystemType == "tmpfs" && mounts[1].mountPoint == "/dev/shm")
        #expect(mounts[2].mountPoint == "/mnt/with space" && mounts[2].root == "/sub" && mounts[2].source == "none\\x")
    }
}
