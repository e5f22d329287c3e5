import Testing
@testable import MitosisInspect
@testable import MitosisModel

@Suite("GraphWatch")
struct GraphWatchTests {
    @Test("streams the whole graph first, then exactly what a new connection adds")
    func streamsChanges() async throws {
        let server = try await ScenarioProcess("tcp")
        defer { server.stop() }
        let p = server.pid
        let listener = try server.intFact("listen_inode")
        let outside = try await ScenarioProcess("tcpclient", [try server.fact("port")])
        defer { outside.stop() }
        let options = GraphOptions(includeDescendants: true, includeMappings: false)
        var changes = ResourceGraph.changes(of: p, options: options, interval: .milliseconds(20)).makeAsyncIterator()
        let first = try #require(try await changes.next())
        let snapshot = try GraphBuilder.graph(of: p, options: options)
        #expect(first.removedNodes.isEmpty && first.addedNodes.map(\.id) == snapshot.nodes.map(\.id))
        try await server.send("accept")
        let fd = try server.intFact("fd"), inode = try server.intFact("inode")
        // Skip snapshots in which nothing but queue counters moved.
        var added: [String] = []
        while !added.contains("socket:\(inode)") {
            let diff = try #require(try await changes.next())
            added += diff.addedNodes.map(\.id)
            if diff.addedNodes.isEmpty { continue }
            #expect(Set(diff.addedNodes.map(\.id)) == ["description:\(p):\(fd)", "socket:\(inode)"])
            #expect(diff.addedEdges.contains(GraphEdge(from: "process:\(p)", to: "description:\(p):\(fd)", kind: .holds,
                                                       attributes: ["fd": .int(Int64(fd)), "cloexec": false])))
            #expect(diff.removedNodes.isEmpty)
            // The listener's accept queue shrinks, in this snapshot or an earlier one. The only
            // other nodes that may change are the harness's stdio pipes: their outside holder is
            // whichever process of the parallel test run holds the other end at that moment.
            let changed = diff.changedNodes.filter { $0.after.id != "socket:\(listener)" }
            #expect(changed.allSatisfy { $0.after.kind == .pipe && $0.before.attributes["external"] == .bool(true) },
                    "\(changed.map(\.after.id))")
        }
    }

    @Test("a frozen snapshot equals the live one and leaves the target running")
    func frozenSnapshot() async throws {
        let child = try await ScenarioProcess("pairs")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let options = GraphOptions(includeDescendants: true, includeMappings: false)
        let frozen = try await ResourceGraph.snapshot(of: child.pid, options: options, freeze: true)
        let live = try await ResourceGraph.snapshot(of: child.pid, options: options)
        #expect(Self.withoutOutsideHolders(frozen) == Self.withoutOutsideHolders(live))
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
    }

    /// The graph without the reasons of its external pipes: they name the process holding the
    /// pipe's other end outside the graph, and the harness's stdio pipes are held by whichever
    /// process of the parallel test run holds them at that moment.
    static func withoutOutsideHolders(_ graph: ResourceGraph) -> ResourceGraph {
        var graph = graph
        for index in graph.nodes.indices where graph.nodes[index].kind == .pipe && graph.nodes[index].attributes["external"] == .bool(true) {
            graph.nodes[index].attributes["reason"] = nil
        }
        return graph
    }
}
