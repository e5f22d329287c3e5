import MitosisModel
/// What must be captured to replicate one process and everything below it, and which of those
/// resources tie it to something outside: the list a checkpoint consults to decide what to dump
/// and what to refuse or warn about.
public struct DependencyClosure: Equatable, Sendable, Codable {
    /// The root process's node id.
    public var root: String
    /// The processes of the closure: the root and its descendants in the graph, ascending.
    public var processes: [Int32]
    /// Every node the closure needs, sorted.
    public var resources: [String]
    /// The resources among them that reach outside the closure, sorted by id.
    public var external: [ExternalResource]
}

/// A resource that ties a closure to something outside it.
public struct ExternalResource: Equatable, Sendable, Codable {
    public var id: String
    public var kind: NodeKind
    public var reason: String

    package init(id: String, kind: NodeKind, reason: String) {
        self.id = id
        self.kind = kind
        self.reason = reason
    }
}

extension ResourceGraph {
    /// The dependency closure of process `pid`: its descendants (through `parent-of`), their
    /// threads, address spaces, mappings, descriptions, the objects behind them, what epolls
    /// watch and the namespaces they are in. A resource is external when the graph marked it so
    /// (a peer or holder outside the graph), or when it is connected to or held by a process of
    /// the graph that is not in the closure.
    public func closure(of pid: Int32) -> DependencyClosure {
        let root = "process:\(pid)"
        var outgoing: [String: [GraphEdge]] = [:], incoming: [String: [GraphEdge]] = [:]
        for edge in edges {
            outgoing[edge.from, default: []].append(edge)
            incoming[edge.to, default: []].append(edge)
        }
        // The processes: the root and everything below it.
        var processes: Set<String> = []
        var queue = node(root) == nil ? [] : [root]
        while let next = queue.popLast() {
            guard processes.insert(next).inserted else { continue }
            queue += (outgoing[next] ?? []).filter { $0.kind == .parentOf }.map(\.to)
        }
        // Everything they depend on.
        let dependencyKinds: Set<EdgeKind> = [.holds, .refersTo, .maps, .watches, .memberOf]
        var reached = processes
        queue = Array(processes)
        while let next = queue.popLast() {
            var targets = (outgoing[next] ?? []).filter { dependencyKinds.contains($0.kind) }.map(\.to)
            if processes.contains(next) {
                targets += (incoming[next] ?? []).filter { $0.kind == .threadOf }.map(\.from)
            }
            for target in targets where reached.insert(target).inserted { queue.append(target) }
        }
        // What reaches outside.
        var external: [String: String] = [:]
        for id in reached {
            guard let node = node(id) else { continue }
            if node.isExternal {
                external[id] = node["reason"]?.description ?? "outside the graph"
                continue
            }
            if node.kind == .namespace || node.kind == .process { continue }
            let outsideHolders = (incoming[id] ?? []).filter { $0.kind == .holds && !processes.contains($0.from) }.map(\.from)
            if let holder = outsideHolders.sorted().first {
                external[id] = "also held by \(holder), outside the closure"
                continue
            }
            let peers = ((outgoing[id] ?? []).filter { $0.kind == .connectedTo }.map(\.to)
                + (incoming[id] ?? []).filter { $0.kind == .connectedTo }.map(\.from))
            if let peer = peers.sorted().first(where: { !reached.contains($0) }) {
                let holders = (incoming[peer] ?? []).filter { $0.kind == .holds }.map(\.from).sorted()
                    + holdersOfObject(peer, incoming: incoming)
                external[id] = "connected to \(peer)" + (holders.first.map { " held by \($0)" } ?? "") + ", outside the closure"
            }
        }
        return DependencyClosure(
            root: root,
            processes: processes.compactMap { node($0)?["pid"] }.compactMap { if case .int(let pid) = $0 { Int32(pid) } else { nil } }.sorted(),
            resources: reached.sorted(),
            external: external.keys.sorted().compactMap { id in
                node(id).map { ExternalResource(id: id, kind: $0.kind, reason: external[id]!) }
            })
    }

    /// The processes holding a description of object `id` (socket, pipe…).
    private func holdersOfObject(_ id: String, incoming: [String: [GraphEdge]]) -> [String] {
        (incoming[id] ?? []).filter { $0.kind == .refersTo }
            .flatMap { description in (incoming[description.from] ?? []).filter { $0.kind == .holds }.map(\.from) }
            .sorted()
    }
}
