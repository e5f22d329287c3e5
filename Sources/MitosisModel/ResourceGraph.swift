/// The resources a process (or a process tree) holds and how they depend on each other: typed
/// nodes joined by typed edges. A resource held by several processes is one node with an edge
/// from each holder. Encoded as `{"nodes": [{"id", "kind", …}], "edges": [{"from", "to", "kind", …}]}`,
/// each node's and edge's attributes flattened beside its fixed keys.
public struct ResourceGraph: Equatable, Sendable, Codable {
    /// Sorted by id.
    public var nodes: [GraphNode]
    /// Sorted by (from, to, kind), then attributes.
    public var edges: [GraphEdge]

    /// Sorts the nodes and edges; duplicate edges are kept once.
    public init(nodes: consuming [GraphNode], edges: consuming [GraphEdge]) {
        // Indices are sorted, then the values moved into place by swaps: copying a node or an
        // edge costs reference counting on each of its strings, and a graph has tens of
        // thousands of them. ASCII ids (all that Mitosis makes) are compared as bytes laid side
        // by side, without touching the strings.
        let ids = ASCIIStrings(nodes.lazy.map(\.id))
        let nodeOrder = ids.map { ids in nodes.indices.sorted { ids.precedes($0, $1) } }
            ?? nodes.indices.sorted { nodes[$0].id < nodes[$1].id }
        Self.permute(&nodes, nodeOrder)
        // Edges compare by their ends' ranks among the sorted node ids (the same order as the ids
        // themselves) when every end is a node; by the ids otherwise.
        var rank: [String: Int] = [:]
        rank.reserveCapacity(nodes.count)
        // Backwards: of equal ids, the first is the one that stays.
        for index in nodes.indices.reversed() { rank[nodes[index].id] = index }
        var keys: [(from: Int, to: Int, kind: EdgeKind)] = []
        keys.reserveCapacity(edges.count)
        for index in edges.indices {
            guard let from = rank[edges[index].from], let to = rank[edges[index].to] else { break }
            keys.append((from, to, edges[index].kind))
        }
        let ranked = keys.count == edges.count
        let edgeOrder: [Int]
        if ranked {
            edgeOrder = edges.indices.sorted { a, b in
                let (x, y) = (keys[a], keys[b])
                if x.from != y.from { return x.from < y.from }
                if x.to != y.to { return x.to < y.to }
                if x.kind != y.kind { return x.kind < y.kind }
                return edges[a] < edges[b]
            }
        } else {
            edgeOrder = edges.indices.sorted { edges[$0] < edges[$1] }
        }
        Self.permute(&edges, edgeOrder)
        // Duplicates are neighbours now; edges whose ends or kinds differ differ, so only
        // neighbours with the same ones are compared. Kept edges are swapped forward.
        func sameEnds(_ a: Int, _ b: Int) -> Bool {
            guard ranked else { return true }
            let (x, y) = (keys[edgeOrder[a]], keys[edgeOrder[b]])
            return x.from == y.from && x.to == y.to && x.kind == y.kind
        }
        var kept = 0
        var last = -1  // the sorted position of the last edge kept
        for index in edges.indices {
            if last >= 0, sameEnds(last, index), edges[kept - 1] == edges[index] { continue }
            if kept != index { edges.swapAt(kept, index) }
            kept += 1
            last = index
        }
        edges.removeLast(edges.count - kept)
        self.nodes = nodes
        self.edges = edges
    }

    /// Reorders `values` so that position i holds what was at `order[i]`, by swaps along each cycle.
    private static func permute<Value>(_ values: inout [Value], _ order: [Int]) {
        var placed = [Bool](repeating: false, count: order.count)
        for start in order.indices where !placed[start] {
            var current = start
            while true {
                placed[current] = true
                let source = order[current]
                if source == start { break }
                values.swapAt(current, source)
                current = source
            }
        }
    }

    /// The node with `id`, if present.
    public func node(_ id: String) -> GraphNode? {
        var low = 0, high = nodes.count
        while low < high {
            let middle = (low + high) / 2
            if nodes[middle].id < id { low = middle + 1 } else { high = middle }
        }
        return low < nodes.count && nodes[low].id == id ? nodes[low] : nil
    }

    public func nodes(of kind: NodeKind) -> [GraphNode] { nodes.filter { $0.kind == kind } }

    public func edges(of kind: EdgeKind) -> [GraphEdge] { edges.filter { $0.kind == kind } }

    /// Nodes marked `external`: what ties the graph to something outside it.
    public var externalNodes: [GraphNode] { nodes.filter { $0.isExternal } }
}

/// The kinds of node.
public enum NodeKind: String, Sendable, Codable, CaseIterable, Comparable {
    case process, thread
    case addressSpace = "address-space"
    case mapping
    /// Anything reached through a path or a device/inode pair: regular files, directories,
    /// FIFOs, devices, terminals, memfds, shared anonymous memory.
    case file
    /// An open file description: what an fd number points to (position, flags), possibly shared.
    case description
    case pipe, socket, eventfd, epoll, timerfd, signalfd, inotify
    /// Another anonymous-inode object (fanotify, pidfd, io_uring, userfaultfd…).
    case anonInode = "anon-inode"
    case sysvSegment = "sysv-segment"
    case namespace

    public static func < (lhs: NodeKind, rhs: NodeKind) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The kinds of edge.
public enum EdgeKind: String, Sendable, Codable, CaseIterable, Comparable {
    /// Parent process → child process.
    case parentOf = "parent-of"
    /// Thread → its process.
    case threadOf = "thread-of"
    /// Address space → mapping.
    case maps
    /// Process → open file description (attribute `fd`), or process → its address space.
    case holds
    /// Description or mapping → the object behind it (file, pipe, socket, eventfd…).
    case refersTo = "refers-to"
    /// Socket ↔ peer socket (from the lower id), pipe write-end description → read-end description.
    case connectedTo = "connected-to"
    /// epoll → watched description; inotify → watched file.
    case watches
    /// Process → process that holds the same open file descriptions (`descriptions`), fd table or
    /// address space (`what`), as kcmp(2) proves.
    case shares
    /// Process → namespace.
    case memberOf = "member-of"

    public static func < (lhs: EdgeKind, rhs: EdgeKind) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// An attribute value: JSON string, integer, boolean or list of strings.
public enum GraphValue: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    case string(String)
    case int(Int64)
    case bool(Bool)
    case strings([String])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .int(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else { self = .strings(try container.decode([String].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .strings(let value): try container.encode(value)
        }
    }

    public var description: String {
        switch self {
        case .string(let value): return value
        case .int(let value): return String(value)
        case .bool(let value): return String(value)
        case .strings(let value): return value.joined(separator: ",")
        }
    }

    public static func < (lhs: GraphValue, rhs: GraphValue) -> Bool { lhs.description < rhs.description }
}

/// Attribute keys and values, encoded beside a node's or edge's fixed keys: a few entries kept
/// sorted by key (UTF-8 bytes), so that a graph of tens of thousands of nodes and edges hashes
/// no key while it is built and sorts none while it is written. Used as a `[String: GraphValue]`.
public struct GraphAttributes: Hashable, Sendable, Codable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    public typealias Element = (key: String, value: GraphValue)

    struct Entry: Hashable, Sendable {
        var key: String
        var value: GraphValue
    }

    /// Sorted by key, each key once.
    private(set) var entries: [Entry] = []

    public init() {}

    /// A key given twice keeps its last value.
    public init(dictionaryLiteral elements: (String, GraphValue)...) {
        entries = elements.map { Entry(key: $0.0, value: $0.1) }
        guard entries.count > 1 else { return }
        // Stable, so of equal keys the last stays last; literals are short, mostly written in order.
        for index in 1..<entries.count {
            var position = index
            while position > 0, JSONBytes.precedes(entries[position].key, entries[position - 1].key) {
                entries.swapAt(position, position - 1)
                position -= 1
            }
        }
        var kept = 1
        for index in 1..<entries.count {
            if entries[kept - 1].key == entries[index].key { entries[kept - 1] = entries[index] } else {
                entries[kept] = entries[index]
                kept += 1
            }
        }
        entries.removeLast(entries.count - kept)
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }
    public var keys: [String] { entries.map(\.key) }

    /// Where `key` is, or where it would go.
    private func position(of key: String) -> (index: Int, found: Bool) {
        for (index, entry) in entries.enumerated() {
            if entry.key == key { return (index, true) }
            if JSONBytes.precedes(key, entry.key) { return (index, false) }
        }
        return (entries.count, false)
    }

    public subscript(key: String) -> GraphValue? {
        get {
            for entry in entries where entry.key == key { return entry.value }
            return nil
        }
        set {
            let (index, found) = position(of: key)
            switch (found, newValue) {
            case (true, let value?): entries[index].value = value
            case (true, nil): entries.remove(at: index)
            case (false, let value?): entries.insert(Entry(key: key, value: value), at: index)
            case (false, nil): break
            }
        }
    }

    /// As `Dictionary.merge(_:uniquingKeysWith:)`.
    public mutating func merge(_ other: GraphAttributes, uniquingKeysWith combine: (GraphValue, GraphValue) throws -> GraphValue) rethrows {
        // Both sorted: one pass.
        var merged: [Entry] = []
        merged.reserveCapacity(entries.count + other.entries.count)
        var mine = 0, theirs = 0
        while mine < entries.count || theirs < other.entries.count {
            if theirs == other.entries.count || (mine < entries.count && JSONBytes.precedes(entries[mine].key, other.entries[theirs].key)) {
                merged.append(entries[mine])
                mine += 1
            } else if mine == entries.count || entries[mine].key != other.entries[theirs].key {
                merged.append(other.entries[theirs])
                theirs += 1
            } else {
                merged.append(Entry(key: entries[mine].key, value: try combine(entries[mine].value, other.entries[theirs].value)))
                mine += 1
                theirs += 1
            }
        }
        entries = merged
    }

    /// In key order.
    public func makeIterator() -> some IteratorProtocol<Element> {
        entries.lazy.map { (key: $0.key, value: $0.value) }.makeIterator()
    }

    public var underestimatedCount: Int { entries.count }

    public var description: String { "[" + entries.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]" }

    /// Encoded as the `[String: GraphValue]` it stands for.
    public init(from decoder: any Decoder) throws {
        let dictionary = try decoder.singleValueContainer().decode([String: GraphValue].self)
        for (key, value) in dictionary { self[key] = value }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Dictionary(uniqueKeysWithValues: entries.map { ($0.key, $0.value) }))
    }
}

/// One resource.
public struct GraphNode: Hashable, Sendable, Codable {
    /// Stable across snapshots: `process:PID`, `socket:INODE`, `description:PID:FD`…
    public var id: String
    public var kind: NodeKind
    public var attributes: GraphAttributes

    public init(id: String, kind: NodeKind, attributes: GraphAttributes = [:]) {
        self.id = id
        self.kind = kind
        self.attributes = attributes
    }

    public subscript(key: String) -> GraphValue? { attributes[key] }

    /// Whether the resource ties the graph to something outside it (see `reason`).
    public var isExternal: Bool { attributes["external"] == .bool(true) }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        id = try container.decode(String.self, forKey: AnyKey("id"))
        kind = try container.decode(NodeKind.self, forKey: AnyKey("kind"))
        attributes = try AnyKey.attributes(container, excluding: ["id", "kind"])
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: AnyKey.self)
        try container.encode(id, forKey: AnyKey("id"))
        try container.encode(kind, forKey: AnyKey("kind"))
        for (key, value) in attributes { try container.encode(value, forKey: AnyKey(key)) }
    }
}

extension GraphValue: JSONNodeConvertible {
    package func jsonNode(keys: KeyCache) throws -> JSONNode {
        switch self {
        case .string(let value): return .string(value)
        case .int(let value): return .int(value)
        case .bool(let value): return .bool(value)
        case .strings(let values):
            let array = JSONArrayBox()
            array.elements = values.map { .string($0) }
            return .array(array)
        }
    }
}

extension GraphValue {
    /// What `jsonNode` gives, written.
    func writeJSON(to output: inout JSONBytes, depth: Int) {
        switch self {
        case .string(let value): output.writeString(value)
        case .int(let value): output.writeInt(value)
        case .bool(let value): output.writeBool(value)
        case .strings(let values):
            output.openContainer(UInt8(ascii: "["))
            var first = true
            for value in values {
                output.startElement(&first, depth: depth)
                output.writeString(value)
            }
            output.closeContainer(UInt8(ascii: "]"), depth: depth)
        }
    }
}

extension JSONBytes {
    /// A node's or an edge's object: `fixed` entries (string values, given in key order) then
    /// `attributes` (as its `encode(to:)` encodes them), written as an object node would be.
    mutating func writeGraphObject(_ fixed: FixedEntries, attributes: GraphAttributes, depth: Int) {
        // Attribute keys are snake_case and need no escape (all Mitosis makes): fixed entries and
        // attributes, each sorted, merged as they are written. Otherwise, undone and sorted.
        let mark = bytes.count
        if writeMergedGraphObject(fixed, attributes: attributes, depth: depth) { return }
        bytes.removeSubrange(mark...)
        var entries: [(key: String, value: GraphValue)] = []
        swap(&entries, &graphEntries)
        defer {
            entries.removeAll(keepingCapacity: true)
            swap(&entries, &graphEntries)
        }
        for index in 0..<fixed.count { entries.append((fixed.key(index), .string(fixed.value(index)))) }
        for (key, value) in attributes { entries.append((keys.snakeCase(key), value)) }
        JSONBytes.sortEntries(&entries)
        openContainer(UInt8(ascii: "{"))
        var first = true
        for entry in entries {
            startEntry(&first, key: entry.key, depth: depth)
            entry.value.writeJSON(to: &self, depth: depth + 1)
        }
        closeContainer(UInt8(ascii: "}"), depth: depth)
    }

    /// Up to three fixed entries of a node or an edge, in key order, without an array.
    struct FixedEntries {
        var keys: (StaticString, StaticString, StaticString)
        var values: (String, String, String)
        var count: Int

        init(_ k0: StaticString, _ v0: String, _ k1: StaticString, _ v1: String) {
            (keys, values, count) = ((k0, k1, ""), (v0, v1, ""), 2)
        }

        init(_ k0: StaticString, _ v0: String, _ k1: StaticString, _ v1: String, _ k2: StaticString, _ v2: String) {
            (keys, values, count) = ((k0, k1, k2), (v0, v1, v2), 3)
        }

        func staticKey(_ index: Int) -> StaticString { index == 0 ? keys.0 : index == 1 ? keys.1 : keys.2 }
        func key(_ index: Int) -> String { staticKey(index).description }
        func value(_ index: Int) -> String { index == 0 ? values.0 : index == 1 ? values.1 : values.2 }
    }

    /// `fixed` and the attributes merged in key order, an attribute replacing a fixed entry of
    /// its key (the last value encoded); false, part written, at a key to convert or escape.
    private mutating func writeMergedGraphObject(_ fixed: FixedEntries, attributes: GraphAttributes, depth: Int) -> Bool {
        openContainer(UInt8(ascii: "{"))
        var first = true
        var next = 0
        for attribute in attributes.entries {
            while next < fixed.count, !JSONBytes.precedes(attribute.key, fixed.staticKey(next)) {
                if !JSONBytes.equal(attribute.key, fixed.staticKey(next)) {
                    startElement(&first, depth: depth)
                    writePlainKey(fixed.staticKey(next))
                    writeString(fixed.value(next))
                }
                next += 1
            }
            startElement(&first, depth: depth)
            guard writePlainKey(attribute.key) else { return false }
            attribute.value.writeJSON(to: &self, depth: depth + 1)
        }
        while next < fixed.count {
            startElement(&first, depth: depth)
            writePlainKey(fixed.staticKey(next))
            writeString(fixed.value(next))
            next += 1
        }
        closeContainer(UInt8(ascii: "}"), depth: depth)
        return true
    }

    /// A key written as it is, with its separator: one in snake_case (what the key conversion
    /// leaves alone) that needs no escape; false, nothing written, for any other.
    @discardableResult
    private mutating func writePlainKey(_ key: String) -> Bool {
        var key = key
        return key.withUTF8 { writePlainKey($0) }
    }

    @discardableResult
    private mutating func writePlainKey(_ key: StaticString) -> Bool {
        key.withUTF8Buffer { writePlainKey($0) }
    }

    private mutating func writePlainKey(_ utf8: UnsafeBufferPointer<UInt8>) -> Bool {
        for byte in utf8 where byte < 0x20 || byte >= 0x80 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || KeyCache.isUpper(byte) {
            return false
        }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: utf8)
        bytes.append(UInt8(ascii: "\""))
        if pretty { append(" : ") } else { bytes.append(UInt8(ascii: ":")) }
        return true
    }

    static func precedes(_ a: String, _ b: StaticString) -> Bool {
        var a = a
        return a.withUTF8 { x in b.withUTF8Buffer { y in precedes(x, y) } }
    }

    static func equal(_ a: String, _ b: StaticString) -> Bool {
        var a = a
        return a.withUTF8 { x in b.withUTF8Buffer { y in x.elementsEqual(y) } }
    }
}

extension GraphNode: JSONNodeConvertible, JSONStreamable {
    package func jsonNode(keys: KeyCache) throws -> JSONNode { .custom(self) }

    /// As `encode(to:)`: `id`, `kind` (in key order), then the attributes beside them.
    package func writeJSON(to output: inout JSONBytes, depth: Int) {
        output.writeGraphObject(JSONBytes.FixedEntries("id", id, "kind", kind.rawValue), attributes: attributes, depth: depth)
    }
}

extension GraphEdge: JSONNodeConvertible, JSONStreamable {
    package func jsonNode(keys: KeyCache) throws -> JSONNode { .custom(self) }

    /// As `encode(to:)`: `from`, `to`, `kind` (given in key order), then the attributes beside them.
    package func writeJSON(to output: inout JSONBytes, depth: Int) {
        output.writeGraphObject(JSONBytes.FixedEntries("from", from, "kind", kind.rawValue, "to", to), attributes: attributes, depth: depth)
    }
}

extension ResourceGraph: JSONNodeConvertible {
    /// As the synthesized `encode(to:)`: `nodes` and `edges`, each element writing itself.
    package func jsonNode(keys: KeyCache) throws -> JSONNode {
        let object = JSONObjectBox()
        object.add("nodes", .custom(JSONStreamedArray(nodes)), keys: keys)
        // Written first (keys are sorted): room for the nodes too.
        object.add("edges", .custom(JSONStreamedArray(edges, reserving: edges.count + nodes.count)), keys: keys)
        return .object(object)
    }
}

/// One typed dependency between two resources.
public struct GraphEdge: Hashable, Sendable, Codable, Comparable {
    public var from: String
    public var to: String
    public var kind: EdgeKind
    public var attributes: GraphAttributes

    public init(from: String, to: String, kind: EdgeKind, attributes: GraphAttributes = [:]) {
        self.from = from
        self.to = to
        self.kind = kind
        self.attributes = attributes
    }

    public static func < (lhs: GraphEdge, rhs: GraphEdge) -> Bool {
        if lhs.from != rhs.from { return lhs.from < rhs.from }
        if lhs.to != rhs.to { return lhs.to < rhs.to }
        if lhs.kind != rhs.kind { return lhs.kind < rhs.kind }
        return lhs.attributes.sorted { $0.key < $1.key }.lexicographicallyPrecedes(rhs.attributes.sorted { $0.key < $1.key }) {
            ($0.key, $0.value) < ($1.key, $1.value)
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: AnyKey.self)
        from = try container.decode(String.self, forKey: AnyKey("from"))
        to = try container.decode(String.self, forKey: AnyKey("to"))
        kind = try container.decode(EdgeKind.self, forKey: AnyKey("kind"))
        attributes = try AnyKey.attributes(container, excluding: ["from", "to", "kind"])
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: AnyKey.self)
        try container.encode(from, forKey: AnyKey("from"))
        try container.encode(to, forKey: AnyKey("to"))
        try container.encode(kind, forKey: AnyKey("kind"))
        for (key, value) in attributes { try container.encode(value, forKey: AnyKey(key)) }
    }
}

/// A coding key of any name, for attributes flattened into an object.
package struct AnyKey: CodingKey {
    package var stringValue: String
    package var intValue: Int? { nil }
    package init(_ name: String) { stringValue = name }
    package init?(stringValue: String) { self.stringValue = stringValue }
    package init?(intValue: Int) { nil }

    /// The attributes of a decoded object. Attribute names are snake_case; a decoder that
    /// converted them to camelCase (`JSONOutput.decoder()`) is undone here.
    package static func attributes(_ container: KeyedDecodingContainer<AnyKey>, excluding fixed: Set<String>) throws -> GraphAttributes {
        var attributes: GraphAttributes = [:]
        for key in container.allKeys where !fixed.contains(key.stringValue) {
            let name = key.stringValue.reduce(into: "") { name, character in
                if character.isUppercase { name += "_" + character.lowercased() } else { name.append(character) }
            }
            attributes[name] = try container.decode(GraphValue.self, forKey: key)
        }
        return attributes
    }
}
