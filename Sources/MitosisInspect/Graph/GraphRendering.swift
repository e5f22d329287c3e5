import MitosisModel
/// Human renderings of a graph: Graphviz DOT (a cluster per process, labelled edges) and an
/// indented text listing. JSON goes through `JSONOutput` like every Mitosis document.
extension ResourceGraph {
    /// A one-line summary of a node, used as its DOT label and in the text listing.
    public func label(of node: GraphNode) -> String {
        func value(_ key: String) -> String { node[key]?.description ?? "?" }
        func has(_ key: String) -> Bool { node[key] != nil }
        switch node.kind {
        case .process: return "process \(value("pid")) (\(value("comm")))"
        case .thread: return "thread \(value("tid"))"
        case .addressSpace: return "address space" + (has("mappings") ? " (\(value("mappings")) mappings)" : "")
        case .mapping:
            return "\(value("start"))-\(value("end")) \(value("perms"))" + (has("path") ? " \(value("path"))" : "")
        case .file: return (has("path") ? value("path") : "inode \(value("inode"))") + (has("type") ? " [\(value("type"))]" : "")
        case .description:
            // description:PID:FD names its first holder.
            let holder = node.id.split(separator: ":").dropFirst()
            return "fd \(holder.last ?? "?") of \(holder.first ?? "?"): \(value("access")) pos \(value("position"))"
        case .pipe: return "pipe:[\(value("inode"))]"
        case .socket:
            switch value("protocol") {
            case "tcp", "udp":
                return "\(value("protocol")) \(value("state")) \(value("local"))" + (value("state") == "LISTEN" || value("state") == "UNCONN" ? "" : " → \(value("remote"))")
            case "unix": return "unix \(value("type")) \(value("state"))" + (has("name") ? " \(value("name"))" : "") + " [\(value("inode"))]"
            case "netlink": return "netlink \(value("netlink_protocol")) port \(value("port_id"))"
            default: return "\(value("protocol")) socket:[\(value("inode"))]"
            }
        case .eventfd: return "eventfd" + (has("counter") ? " = \(value("counter"))" : "")
        case .epoll: return "epoll (\(value("watches")) watches)"
        case .timerfd: return "timerfd clock \(value("clock"))"
        case .signalfd: return "signalfd \(value("signals"))"
        case .inotify: return "inotify (\(value("watches")) watches)"
        case .anonInode: return value("name")
        case .sysvSegment: return "SysV shm \(value("shmid"))"
        case .namespace: return "\(value("type")):[\(value("inode"))]"
        }
    }

    /// Graphviz DOT: one cluster per process holding its threads, address space, mappings and
    /// the descriptions it holds first (with the objects only they refer to); shared files and
    /// namespaces outside. External resources are drawn red with their reason.
    public func dot() -> String {
        var incoming: [String: [GraphEdge]] = [:]
        for edge in edges { incoming[edge.to, default: []].append(edge) }
        // Each node's owner process, when it has one.
        var owner: [String: String] = [:]
        for node in nodes where node.kind == .process { owner[node.id] = node.id }
        func assign(_ kinds: Set<EdgeKind>, from sourceKinds: Set<NodeKind>) {
            for edge in edges where kinds.contains(edge.kind) && owner[edge.to] == nil {
                guard let source = node(edge.from), sourceKinds.contains(source.kind) else { continue }
                if let process = owner[edge.from] { owner[edge.to] = process }
            }
        }
        for edge in edges where edge.kind == .threadOf { owner[edge.from] = edge.to }
        assign([.holds], from: [.process])
        assign([.maps], from: [.addressSpace])
        // Objects behind exactly one description live with it.
        for node in nodes where [.pipe, .socket, .eventfd, .epoll, .timerfd, .signalfd, .inotify, .anonInode].contains(node.kind) {
            let referrers = Set((incoming[node.id] ?? []).filter { $0.kind == .refersTo }.compactMap { owner[$0.from] })
            if referrers.count == 1 { owner[node.id] = referrers.first }
        }
        var lines = ["digraph mitosis {", "  rankdir=LR;", "  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=10];",
                     "  edge [fontname=\"Helvetica\", fontsize=9];"]
        func nodeLine(_ node: GraphNode, indent: String) -> String {
            var label = "\(node.kind.rawValue)\\n\(escape(label(of: node)))"
            var style = ""
            if node.isExternal {
                label += "\\nexternal: \(escape(node["reason"]?.description ?? ""))"
                style = ", color=red, fontcolor=red"
            }
            if node.kind == .process { style += ", style=\"rounded,bold\"" }
            return "\(indent)\"\(escape(node.id))\" [label=\"\(label)\"\(style)];"
        }
        let processes = nodes.filter { $0.kind == .process }
        for (index, process) in processes.enumerated() {
            lines.append("  subgraph cluster_\(index) {")
            lines.append("    label=\"\(escape(label(of: process)))\"; style=rounded; color=gray;")
            for node in nodes where owner[node.id] == process.id { lines.append(nodeLine(node, indent: "    ")) }
            lines.append("  }")
        }
        for node in nodes where owner[node.id] == nil { lines.append(nodeLine(node, indent: "  ")) }
        for edge in edges {
            var label = edge.kind.rawValue
            if let fd = edge.attributes["fd"] { label += " fd \(fd)" }
            if let what = edge.attributes["what"] { label += " \(what)" }
            let style: String
            switch edge.kind {
            case .connectedTo: style = ", dir=both, color=blue, fontcolor=blue"
            case .shares: style = ", style=dashed"
            // Every process is in every namespace type: drawn faint so the picture stays readable.
            case .memberOf: style = ", style=dotted, color=gray, fontcolor=gray"
            default: style = ""
            }
            lines.append("  \"\(escape(edge.from))\" -> \"\(escape(edge.to))\" [label=\"\(escape(label))\"\(style)];")
        }
        lines.append("}")
        return lines.joined(separator: "\n") + "\n"
    }

    /// An indented listing: each process with its threads, descriptors (fd → description →
    /// object), address space, namespaces; then connections and external resources.
    public func text() -> String {
        var outgoing: [String: [GraphEdge]] = [:]
        for edge in edges { outgoing[edge.from, default: []].append(edge) }
        func targets(_ id: String, _ kind: EdgeKind) -> [GraphEdge] { (outgoing[id] ?? []).filter { $0.kind == kind } }
        func mark(_ id: String) -> String {
            guard let node = node(id), node.isExternal else { return "" }
            return "  [external: \(node["reason"]?.description ?? "")]"
        }
        var lines: [String] = []
        for process in nodes(of: .process) {
            lines.append(label(of: process))
            let threads = edges.filter { $0.kind == .threadOf && $0.to == process.id }.compactMap { node($0.from)?["tid"]?.description }
            if !threads.isEmpty { lines.append("  threads: \(threads.joined(separator: " "))") }
            let held = targets(process.id, .holds).sorted {
                (Int($0.attributes["fd"]?.description ?? "") ?? -1) < (Int($1.attributes["fd"]?.description ?? "") ?? -1)
            }
            for edge in held {
                guard let description = node(edge.to) else { continue }
                if description.kind == .addressSpace {
                    lines.append("  \(label(of: description))\(mark(description.id))")
                    continue
                }
                let object = targets(description.id, .refersTo).first.flatMap { node($0.to) }
                let objectText = object.map { "\(label(of: $0))\(mark($0.id))" } ?? ""
                let access = "\(description["access"]?.description ?? "?") pos \(description["position"]?.description ?? "?")"
                lines.append("  fd \(edge.attributes["fd"]?.description ?? "?"): \(access) → \(objectText)\(mark(description.id))")
            }
            let namespaces = targets(process.id, .memberOf).compactMap { node($0.to) }.map { label(of: $0) }
            if !namespaces.isEmpty { lines.append("  namespaces: \(namespaces.joined(separator: " "))") }
        }
        let connections = edges.filter { $0.kind == .connectedTo || $0.kind == .watches || $0.kind == .shares || $0.kind == .parentOf }
        if !connections.isEmpty {
            lines.append("edges:")
            for edge in connections {
                let from = node(edge.from).map { label(of: $0) } ?? edge.from
                let to = node(edge.to).map { label(of: $0) } ?? edge.to
                let extra = edge.attributes.isEmpty ? "" : " (" + edge.attributes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ") + ")"
                lines.append("  \(from) \(edge.kind.rawValue) \(to)\(extra)")
            }
        }
        let external = externalNodes
        if !external.isEmpty {
            lines.append("external:")
            for node in external { lines.append("  \(label(of: node)): \(node["reason"]?.description ?? "")") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func escape(_ text: String) -> String {
        text.replacingOccurrences("\\", with: "\\\\").replacingOccurrences("\"", with: "\\\"")
    }
}

extension String {
    /// Foundation-free replacement of every occurrence of `target`.
    func replacingOccurrences(_ target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
