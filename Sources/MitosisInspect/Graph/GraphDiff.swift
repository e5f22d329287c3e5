import MitosisModel
/// What changed between two snapshots of a graph: nodes and edges added or removed, and nodes
/// whose attributes changed (a socket's state or queues, a description's position…).
public struct GraphDiff: Equatable, Sendable, Codable {
    public var addedNodes: [GraphNode] = []
    public var removedNodes: [GraphNode] = []
    public var changedNodes: [NodeChange] = []
    public var addedEdges: [GraphEdge] = []
    public var removedEdges: [GraphEdge] = []

    /// One node before and after.
    public struct NodeChange: Equatable, Sendable, Codable {
        public var before: GraphNode
        public var after: GraphNode
    }

    public var isEmpty: Bool {
        addedNodes.isEmpty && removedNodes.isEmpty && changedNodes.isEmpty && addedEdges.isEmpty && removedEdges.isEmpty
    }

    public init(from old: ResourceGraph, to new: ResourceGraph) {
        var oldNodes = old.nodes.makeIterator(), newNodes = new.nodes.makeIterator()
        var before = oldNodes.next(), after = newNodes.next()
        // Both node lists are sorted by id: one merge pass.
        while before != nil || after != nil {
            if let b = before, let a = after, b.id == a.id {
                if b != a { changedNodes.append(NodeChange(before: b, after: a)) }
                before = oldNodes.next()
                after = newNodes.next()
            } else if let b = before, after.map({ b.id < $0.id }) ?? true {
                removedNodes.append(b)
                before = oldNodes.next()
            } else if let a = after {
                addedNodes.append(a)
                after = newNodes.next()
            }
        }
        let oldEdges = Set(old.edges), newEdges = Set(new.edges)
        addedEdges = new.edges.filter { !oldEdges.contains($0) }
        removedEdges = old.edges.filter { !newEdges.contains($0) }
    }

    /// The changes one per record, as `mitosis watch` streams them (one JSON line each):
    /// `{"change": "added"|"removed"|"changed", "node"|"edge": …, "before": …}`.
    public var records: [GraphChange] {
        removedEdges.map { GraphChange(change: .removed, edge: $0) }
            + removedNodes.map { GraphChange(change: .removed, node: $0) }
            + addedNodes.map { GraphChange(change: .added, node: $0) }
            + changedNodes.map { GraphChange(change: .changed, node: $0.after, before: $0.before.attributes) }
            + addedEdges.map { GraphChange(change: .added, edge: $0) }
    }
}

/// One change of a `GraphDiff`.
public struct GraphChange: Equatable, Sendable, Codable {
    public enum Change: String, Sendable, Codable { case added, removed, changed }
    public var change: Change
    public var node: GraphNode?
    public var edge: GraphEdge?
    /// For a changed node, its attributes before.
    public var before: GraphAttributes?

    public init(change: Change, node: GraphNode? = nil, edge: GraphEdge? = nil, before: GraphAttributes? = nil) {
        self.change = change
        self.node = node
        self.edge = edge
        self.before = before
    }
}
