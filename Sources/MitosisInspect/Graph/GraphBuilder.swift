import SystemPackage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// What to put in a graph.
public struct GraphOptions: Sendable {
    /// The whole process tree below the pid, not the process alone.
    public var includeDescendants = false
    /// Address-space mappings (and the files they map) as nodes.
    public var includeMappings = true
    /// Threads as nodes.
    public var includeThreads = true
    /// File systems whose files a standby would not see (memory-backed): an open file on one is
    /// external.
    public var volatileFileSystems: Set<String> = ["tmpfs", "ramfs"]
    /// When a pipe end or a socket peer is not in the graph, scan the other processes' descriptors
    /// to name its holder (and to tell a closed pipe end from one held outside).
    public var resolveOutsideHolders = true
    /// Read descriptors with the kernel's task/file iterator on these kernels where it is
    /// available; nil: from /proc (tests compare the two paths).
    package var descriptorIterator: DescriptorIterator.Kernels? = .verified

    public init(includeDescendants: Bool = false, includeMappings: Bool = true, includeThreads: Bool = true) {
        self.includeDescendants = includeDescendants
        self.includeMappings = includeMappings
        self.includeThreads = includeThreads
    }
}

/// The resources of one process, as the graph reads them (from `ProcessReader`).
package struct ProcessResources: Sendable {
    package var identity: ProcessIdentity
    package var threads: [ThreadInfo]
    package var namespaces: [NamespaceInfo]
    package var mappings: [MemoryMapping]
    package var descriptors: [OpenDescriptor]
    /// The open file description of each descriptor (its kernel address), index for index, when
    /// the kernel's iterator read them; nil when /proc did (kcmp then tells which are shared).
    package var openFiles: [UInt64]? = nil

    package var pid: Int32 { identity.pid }

    package static func read(_ target: TargetProcess, mappings: Bool, descriptorIterator: DescriptorIterator.Kernels? = .verified) throws(MitosisError) -> ProcessResources {
        let identity = try ProcessReader.identity(target), threads = try ProcessReader.threads(target)
        let namespaces = try ProcessReader.namespaces(target)
        let mappings = mappings ? try ProcessReader.mappings(target, detailed: false) : []
        let (descriptors, openFiles) = if let kernels = descriptorIterator {
            try ProcessReader.descriptorsAndOpenFiles(target, kernels: kernels)
        } else {
            (try ProcessReader.descriptorsFromProc(target), nil as [UInt64]?)
        }
        return ProcessResources(identity: identity, threads: threads, namespaces: namespaces, mappings: mappings,
                                descriptors: descriptors, openFiles: openFiles)
    }

    package var networkNamespace: UInt64? { namespaces.first { $0.type == "net" }?.inode }
}

/// Builds the live resource graph of a process or a process tree from `/proc`, sock_diag and
/// kcmp, without stopping anything.
public enum GraphBuilder {
    /// The graph of `pid` (and, with `includeDescendants`, every process below it).
    public static func graph(of pid: Int32, options: GraphOptions = GraphOptions()) throws(MitosisError) -> ResourceGraph {
        let root = try TargetProcess(pid: pid)
        let pids = options.includeDescendants ? Kernel.processTree(root: pid).sorted() : [pid]
        var processes: [ProcessResources] = []
        for member in pids {
            do {
                processes.append(try ProcessResources.read(member == pid ? root : TargetProcess(pid: member),
                                                           mappings: options.includeMappings, descriptorIterator: options.descriptorIterator))
            } catch where member != pid && error.goneProcess == member {
                continue  // a descendant that has exited (reaped or not)
            }
        }
        var tables: [UInt64: SocketTable] = [:]
        for process in processes where process.descriptors.contains(where: { $0.kind == .socket }) {
            guard let namespace = process.networkNamespace, tables[namespace] == nil else { continue }
            tables[namespace] = try SockDiag(networkNamespaceOf: process.pid).table()
        }
        let mounts = Dictionary(
            (ProcessReader.mounts(root)).map { ($0.device, $0) }, uniquingKeysWith: { first, _ in first })
        var assembly = GraphAssembly(processes: processes, sockets: tables, mounts: mounts, options: options)
        if processes.contains(where: { $0.mappings.contains { $0.kind == .sysvSharedMemory } }) {
            assembly.sharedMemory = ProcessReader.sharedMemorySegments(root) ?? []
        }
        assembly.build()
        return assembly.takeGraph()
    }
}

/// The mutable state of one graph build.
package struct GraphAssembly {
    package let processes: [ProcessResources]
    package let sockets: [UInt64: SocketTable]
    package let mounts: [DeviceNumber: MountInfo]
    package let options: GraphOptions
    /// The SysV shared memory segments of the processes' IPC namespace, when Mitosis can see it.
    package var sharedMemory: [SysVSharedMemory] = []
    private(set) var nodes: [String: GraphNode] = [:]
    /// Appended freely; sorted and deduplicated once, when the graph is made.
    private(set) var edges: [GraphEdge] = []
    /// (pid, fd) → its description in `descriptions`.
    private var descriptionOf: [FDKey: Int] = [:]
    /// Each open file description: its node, the first of its holders (by pid and fd) and the
    /// object behind it.
    private var descriptions: [Description] = []
    /// How many mappings of the graph's address spaces attach each SysV segment (by shmid).
    private var attachments: [Int32: UInt64] = [:]
    /// Links (`pipe:[N]`, `socket:[N]`, a FIFO's path) that ends and peers outside the graph are looked up by.
    private var wanted: [String: [(node: String, reason: (String?) -> String)]] = [:]

    package struct FDKey: Hashable { var pid: Int32; var fd: Int32 }

    package init(processes: [ProcessResources], sockets: [UInt64: SocketTable], mounts: [DeviceNumber: MountInfo], options: GraphOptions) {
        self.processes = processes
        self.sockets = sockets
        self.mounts = mounts
        self.options = options
    }

    /// The graph built, with the edges moved into it rather than copied (it sorts them in place).
    package mutating func takeGraph() -> ResourceGraph {
        let taken = edges
        edges = []
        return ResourceGraph(nodes: Array(nodes.values), edges: taken)
    }

    package mutating func build() {
        addProcesses()
        addAddressSpaces()
        addDescriptions()
        addPipes()
        addSockets()
        addWatches()
        addSharing()
        addSharedMemoryHolders()
        resolveOutside()
    }

    // MARK: Nodes and edges

    private mutating func add(_ id: String, _ kind: NodeKind, _ attributes: GraphAttributes = [:]) {
        if nodes[id] == nil { nodes[id] = GraphNode(id: id, kind: kind, attributes: attributes) }
    }

    private mutating func link(_ from: String, _ to: String, _ kind: EdgeKind, _ attributes: GraphAttributes = [:]) {
        edges.append(GraphEdge(from: from, to: to, kind: kind, attributes: attributes))
    }

    private mutating func markExternal(_ id: String, _ reason: String) {
        guard nodes[id] != nil, nodes[id]?["external"] == nil else { return }
        nodes[id]?.attributes["external"] = .bool(true)
        nodes[id]?.attributes["reason"] = .string(reason)
    }

    package static func processID(_ pid: Int32) -> String { "process:\(pid)" }

    // MARK: Processes, threads, namespaces

    private mutating func addProcesses() {
        let members = Set(processes.map(\.pid))
        for process in processes {
            let id = Self.processID(process.pid)
            add(id, .process, ["pid": .int(Int64(process.pid)), "ppid": .int(Int64(process.identity.ppid)),
                               "comm": .string(process.identity.comm), "threads": .int(Int64(process.threads.count))])
            if members.contains(process.identity.ppid) { link(Self.processID(process.identity.ppid), id, .parentOf) }
            if options.includeThreads {
                for thread in process.threads {
                    add("thread:\(thread.tid)", .thread, ["tid": .int(Int64(thread.tid)), "name": .string(thread.name)])
                    link("thread:\(thread.tid)", id, .threadOf)
                }
            }
            for namespace in process.namespaces where !namespace.type.hasSuffix("_for_children") {
                let namespaceID = "namespace:\(namespace.type):\(namespace.inode)"
                add(namespaceID, .namespace, ["type": .string(namespace.type), "inode": .int(Int64(namespace.inode))])
                link(id, namespaceID, .memberOf)
            }
        }
    }

    // MARK: Address spaces and mappings

    private mutating func addAddressSpaces() {
        // Processes that share one address space (CLONE_VM) share one node.
        let groups = Self.groupByKcmp(processes.map { FDKey(pid: $0.pid, fd: 0) }, .addressSpace)
        for group in groups {
            let owner = processes[group[0]]
            let spaceID = "address-space:\(owner.pid)"
            add(spaceID, .addressSpace, options.includeMappings ? ["mappings": .int(Int64(owner.mappings.count))] : [:])
            for index in group { link(Self.processID(processes[index].pid), spaceID, .holds) }
            for other in group.dropFirst() {
                link(Self.processID(owner.pid), Self.processID(processes[other].pid), .shares, ["what": .string("address-space")])
            }
            guard options.includeMappings else { continue }
            for mapping in owner.mappings { addMapping(mapping, in: spaceID, owner: owner.pid) }
        }
        // Processes that share one fd table (CLONE_FILES).
        for group in Self.groupByKcmp(processes.map { FDKey(pid: $0.pid, fd: 0) }, .fileTable) where group.count > 1 {
            for other in group.dropFirst() {
                link(Self.processID(processes[group[0]].pid), Self.processID(processes[other].pid), .shares, ["what": .string("fd-table")])
            }
        }
    }

    private mutating func addMapping(_ mapping: MemoryMapping, in spaceID: String, owner: Int32) {
        let id = "mapping:\(owner):\(Self.hex(mapping.start))"
        var attributes: GraphAttributes = [
            "start": .string(Self.hex(mapping.start)), "end": .string(Self.hex(mapping.end)),
            "perms": .string(mapping.perms), "offset": .int(Int64(mapping.offset)), "type": .string(mapping.kind.rawValue),
        ]
        if let path = mapping.path { attributes["path"] = .string(path) }
        add(id, .mapping, attributes)
        link(spaceID, id, .maps)
        switch mapping.kind {
        case .file, .sharedAnonymous:
            let file = fileID(device: mapping.device, inode: mapping.inode)
            var fileAttributes: GraphAttributes = ["device": .string(mapping.device.description), "inode": .int(Int64(mapping.inode))]
            if let path = mapping.path { fileAttributes["path"] = .string(path) }
            if mapping.deleted { fileAttributes["deleted"] = .bool(true) }
            add(file, .file, fileAttributes)
            link(id, file, .refersTo)
            markVolatile(file, device: mapping.device, path: mapping.path)
        case .sysvSharedMemory:
            let segment = "sysv-segment:\(mapping.inode)"
            add(segment, .sysvSegment, ["shmid": .int(Int64(mapping.inode)), "key": .string(mapping.path ?? "")])
            link(id, segment, .refersTo)
            attachments[Int32(truncatingIfNeeded: mapping.inode), default: 0] += 1
        default:
            break
        }
    }

    private func fileID(device: DeviceNumber, inode: UInt64) -> String { "file:\(device):\(inode)" }

    package static func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

    // MARK: Open file descriptions and the objects behind them

    /// What a descriptor opens: descriptors of one object may share open file descriptions.
    private enum ObjectKey: Hashable {
        case socket(inode: UInt64)
        case eventfd(id: Int)
        case file(target: String, device: DeviceNumber?, inode: UInt64)
    }

    /// One open file description of the graph.
    private struct Description {
        var id: String
        /// The node of the object behind it.
        var object: String
        /// Its holders sorted by (pid, fd): the first is the descriptor it is described by.
        var holders: [Member]
    }

    /// One descriptor of a bucket: its key and where it is in `processes`.
    private struct Member {
        var key: FDKey
        var process: Int
        var index: Int
    }

    /// A copy of the descriptor (its strings and arrays retained): where one field is wanted,
    /// `processes[member.process].descriptors[member.index].field` reads it without the copy.
    private func descriptor(_ member: Member) -> OpenDescriptor { processes[member.process].descriptors[member.index] }

    private mutating func addDescriptions() {
        // Bucket descriptors by the object they open; inside a bucket, kcmp tells which share one
        // open file description. A socket or an eventfd has exactly one description.
        let total = processes.reduce(0) { $0 + $1.descriptors.count }
        var buckets: [ObjectKey: [Member]] = [:]
        buckets.reserveCapacity(total)
        descriptions.reserveCapacity(total)
        descriptionOf.reserveCapacity(total)
        nodes.reserveCapacity(nodes.count + 2 * total)
        edges.reserveCapacity(edges.count + 2 * total)
        for (position, process) in processes.enumerated() {
            for (index, descriptor) in process.descriptors.enumerated() {
                let object: ObjectKey
                if descriptor.kind == .socket {
                    object = .socket(inode: descriptor.inode)
                } else if let id = descriptor.eventfd?.id {
                    object = .eventfd(id: id)
                } else {
                    object = .file(target: descriptor.target, device: descriptor.device, inode: descriptor.inode)
                }
                buckets[object, default: []].append(Member(key: FDKey(pid: process.pid, fd: descriptor.fd), process: position, index: index))
            }
        }
        let processIDs = processes.map { Self.processID($0.pid) }
        let byAddress = processes.allSatisfy { $0.openFiles != nil }
        let accessModes = ["O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"]
        // The flags a description shows, per descriptor flags: most descriptors share a few sets.
        var shownFlags: [UInt32: (names: [String], shown: [String])] = [:]
        for bucket in buckets.values {
            for group in descriptionGroups(bucket, byAddress: byAddress) {
                let holders = group.map { bucket[$0] }.sorted { ($0.key.pid, $0.key.fd) < ($1.key.pid, $1.key.fd) }
                let first = holders[0]
                let descriptor = descriptor(first)
                let id = "description:\(first.key.pid):\(first.key.fd)"
                let flags: [String]
                if let known = shownFlags[descriptor.flags], known.names == descriptor.flagNames {
                    flags = known.shown
                } else {
                    flags = descriptor.flagNames.filter { $0 != "O_CLOEXEC" && !accessModes.contains($0) }
                    shownFlags[descriptor.flags] = (descriptor.flagNames, flags)
                }
                add(id, .description, [
                    "access": .string(accessModes[Int(descriptor.flags & 3)]), "flags": .strings(flags),
                    "position": .int(Int64(descriptor.position)),
                ])
                for holder in holders {
                    descriptionOf[holder.key] = descriptions.count
                    let cloexec = (processes[holder.process].descriptors[holder.index].flags & 0o2000000) != 0
                    link(processIDs[holder.process], id, .holds, ["cloexec": .bool(cloexec), "fd": .int(Int64(holder.key.fd))])
                }
                let object = addObject(for: descriptor, description: id)
                descriptions.append(Description(id: id, object: object, holders: holders))
            }
        }
    }

    /// Groups a bucket of descriptors into open file descriptions (indices into `bucket`): by
    /// the open files' addresses when every process was read by the kernel's iterator, by kcmp otherwise.
    private func descriptionGroups(_ bucket: [Member], byAddress: Bool) -> [[Int]] {
        if bucket.count == 1 { return [[0]] }
        let first = descriptor(bucket[0])
        if first.kind == .socket || first.eventfd?.id != nil { return [Array(bucket.indices)] }
        guard byAddress else { return Self.groupByKcmp(bucket.map(\.key), .file) }
        // The groups kcmp would form, ordered by their first member (the order does not reach the graph).
        var groups: [[Int]] = [], groupOf: [UInt64: Int] = [:]
        for (index, member) in bucket.enumerated() {
            let address = processes[member.process].openFiles![member.index]
            if let group = groupOf[address] {
                groups[group].append(index)
            } else {
                groupOf[address] = groups.count
                groups.append([index])
            }
        }
        return groups
    }

    /// Groups (pid, index) pairs that name the same kernel object of `kind`: sorted by the
    /// kernel's order (O(n log n) kcmp calls), then equal neighbours joined. When the kernel
    /// refuses to order, falls back to pairwise comparison; when it refuses to compare, each
    /// stands alone.
    static func groupByKcmp(_ items: [FDKey], _ kind: Kernel.KcmpKind) -> [[Int]] {
        guard items.count > 1 else { return items.isEmpty ? [] : [[0]] }
        struct Unordered: Error {}
        func order(_ a: FDKey, _ b: FDKey) throws -> Kernel.Comparison {
            let result = try Kernel.kcmpOrder(a.pid, b.pid, kind, Int(a.fd), Int(b.fd))
            if result == .unordered { throw Unordered() }
            return result
        }
        var sorted = Array(items.indices)
        do {
            try sorted.sort { try order(items[$0], items[$1]) == .orderedAscending }
            var groups: [[Int]] = [[sorted[0]]]
            for index in sorted.dropFirst() {
                if try order(items[groups[groups.count - 1][0]], items[index]) == .orderedSame {
                    groups[groups.count - 1].append(index)
                } else {
                    groups.append([index])
                }
            }
            return groups.map { $0.sorted() }
        } catch is Unordered {
            var groups: [[Int]] = []
            for index in items.indices {
                if let group = groups.firstIndex(where: { (try? Kernel.kcmpEqual(items[$0[0]].pid, items[index].pid, kind,
                                                                                  Int(items[$0[0]].fd), Int(items[index].fd))) == true }) {
                    groups[group].append(index)
                } else {
                    groups.append([index])
                }
            }
            return groups
        } catch {
            return items.indices.map { [$0] }
        }
    }

    /// The object behind one description, its node and the `refers-to` edge; its node's id.
    private mutating func addObject(for descriptor: OpenDescriptor, description: String) -> String {
        let suffix = description.dropFirst("description:".count)
        let id: String
        switch descriptor.kind {
        case .pipe:
            id = "pipe:\(descriptor.inode)"
            add(id, .pipe, ["inode": .int(Int64(descriptor.inode))])
        case .socket:
            id = "socket:\(descriptor.inode)"
            add(id, .socket, ["inode": .int(Int64(descriptor.inode))])
        case .eventfd:
            id = "eventfd:\(suffix)"
            var attributes: GraphAttributes = [:]
            if let state = descriptor.eventfd {
                attributes["counter"] = .int(Int64(bitPattern: state.counter))
                if let eventfdID = state.id { attributes["eventfd_id"] = .int(Int64(eventfdID)) }
                if let semaphore = state.semaphore { attributes["semaphore"] = .bool(semaphore) }
            }
            add(id, .eventfd, attributes)
        case .epoll:
            id = "epoll:\(suffix)"
            add(id, .epoll, ["watches": .int(Int64(descriptor.epoll?.count ?? 0))])
        case .timerfd:
            id = "timerfd:\(suffix)"
            var attributes: GraphAttributes = [:]
            if let state = descriptor.timerfd {
                attributes["clock"] = .int(Int64(state.clockId))
                attributes["ticks"] = .int(Int64(bitPattern: state.ticks))
                attributes["armed"] = .bool(state.value.seconds != 0 || state.value.nanoseconds != 0)
            }
            add(id, .timerfd, attributes)
        case .signalfd:
            id = "signalfd:\(suffix)"
            add(id, .signalfd, ["signals": .strings((descriptor.signalfd?.signals ?? []).map(String.init))])
        case .inotify:
            id = "inotify:\(suffix)"
            add(id, .inotify, ["watches": .int(Int64(descriptor.inotify?.count ?? 0))])
        case .fanotify, .pidfd, .ioUring, .anonInode:
            id = "anon-inode:\(suffix)"
            add(id, .anonInode, ["name": .string(descriptor.anonInodeName ?? descriptor.kind.rawValue)])
        default:
            let device = descriptor.device ?? DeviceNumber(major: 0, minor: 0)
            id = fileID(device: device, inode: descriptor.inode)
            var attributes: GraphAttributes = [
                "type": .string(descriptor.kind.rawValue), "device": .string(device.description),
                "inode": .int(Int64(descriptor.inode)),
            ]
            attributes["path"] = .string(descriptor.path ?? descriptor.target)
            if descriptor.deleted { attributes["deleted"] = .bool(true) }
            add(id, .file, attributes)
            if descriptor.kind == .tty {
                markExternal(id, "terminal \(descriptor.path ?? descriptor.target): its other side is outside the graph")
            } else if [.file, .directory, .fifo, .messageQueue].contains(descriptor.kind) {
                markVolatile(id, device: device, path: descriptor.path)
            }
        }
        link(description, id, .refersTo)
        return id
    }

    /// Marks a file external when it lives on a memory-backed mount a standby would not see.
    private mutating func markVolatile(_ id: String, device: DeviceNumber, path: String?) {
        guard let mount = mounts[device], options.volatileFileSystems.contains(mount.fileSystemType) else { return }
        if path?.hasPrefix("/memfd:") == true || path == "/dev/zero" || path?.hasPrefix("/SYSV") == true { return }
        markExternal(id, "on \(mount.fileSystemType) mount \(mount.mountPoint): memory-backed, a standby would not see it")
    }

    // MARK: Pipes

    private mutating func addPipes() {
        var ends: [String: (read: [String], write: [String])] = [:]
        for entry in descriptions {
            let first = entry.holders[0]
            let kind = processes[first.process].descriptors[first.index].kind
            guard kind == .pipe || kind == .fifo else { continue }
            let access = processes[first.process].descriptors[first.index].flags & 3
            if access != 1 { ends[entry.object, default: ([], [])].read.append(entry.id) }
            if access != 0 { ends[entry.object, default: ([], [])].write.append(entry.id) }
        }
        for (object, pair) in ends {
            for writer in pair.write { for reader in pair.read where reader != writer { link(writer, reader, .connectedTo) } }
            guard let node = nodes[object] else { continue }
            if node.kind == .file, let path = node["path"]?.description {
                // A FIFO: anyone may open its path, so an end held by any process outside the
                // graph ties the graph to it, whichever ends the graph holds.
                wanted[path, default: []].append((object, { holder in
                    holder.map { "FIFO \(path) is also open in \($0), outside the graph" } ?? ""
                }))
                continue
            }
            guard node.kind == .pipe else { continue }
            let link = "pipe:[\(node["inode"]!.description)]"
            if pair.read.isEmpty { expectOutside(link, node: object, "the read end of \(link)") }
            if pair.write.isEmpty { expectOutside(link, node: object, "the write end of \(link)") }
        }
    }

    /// Records that `node` reaches something named `what` that the graph lacks: the outside scan
    /// names its holder; with none found (a closed pipe end), it is not external.
    private mutating func expectOutside(_ link: String, node: String, _ what: String) {
        wanted[link, default: []].append((node, { holder in
            holder.map { "\(what) is held by \($0), outside the graph" } ?? ""
        }))
    }

    // MARK: Sockets

    /// Where a socket is in its namespace's `SocketTable`.
    private enum SocketPlace {
        case inet(Int), unix(Int), netlink(Int), packet(Int)
    }

    /// A TCP connection's two ends, as its peer is looked up by.
    private struct Ends: Hashable {
        var local: SocketEndpoint
        var remote: SocketEndpoint
    }

    private mutating func addSockets() {
        // Each socket the graph holds, with its network namespace (the last holder's), by inode.
        var namespaceOf: [UInt64: UInt64] = [:]
        for process in processes {
            guard let namespace = process.networkNamespace else {
                for descriptor in process.descriptors where descriptor.kind == .socket { namespaceOf[descriptor.inode] = nil }
                continue
            }
            for descriptor in process.descriptors where descriptor.kind == .socket { namespaceOf[descriptor.inode] = namespace }
        }
        // Each namespace's sockets indexed by inode, and its TCP sockets by their ends: places in
        // the table, not copies of the sockets.
        var indexes: [UInt64: (byInode: [UInt64: SocketPlace], byEnds: [Ends: Int])] = [:]
        for (namespace, table) in sockets {
            var byInode: [UInt64: SocketPlace] = [:], byEnds: [Ends: Int] = [:]
            byInode.reserveCapacity(table.inet.count + table.unix.count + table.netlink.count + table.packet.count)
            // As `SocketTable.byInode`: inode 0 belongs to no descriptor; a later family wins.
            for (index, socket) in table.inet.enumerated() {
                if socket.inode != 0 { byInode[socket.inode] = .inet(index) }
                if socket.protocol == .tcp { byEnds[Ends(local: socket.local, remote: socket.remote)] = index }
            }
            for (index, socket) in table.unix.enumerated() where socket.inode != 0 { byInode[socket.inode] = .unix(index) }
            for (index, socket) in table.netlink.enumerated() where socket.inode != 0 { byInode[socket.inode] = .netlink(index) }
            for (index, socket) in table.packet.enumerated() where socket.inode != 0 { byInode[socket.inode] = .packet(index) }
            indexes[namespace] = (byInode, byEnds)
        }
        // In inode order: what each socket adds (edges, reasons of its own node) does not depend on the order.
        for (inode, namespace) in namespaceOf.sorted(by: { $0.key < $1.key }) {
            let id = "socket:\(inode)"
            guard let index = indexes[namespace], let place = index.byInode[inode], let table = sockets[namespace],
                  nodes[id]?["inode"] == .int(Int64(truncatingIfNeeded: inode))
            else { continue }
            switch place {
            case .inet(let at):
                let inet = table.inet[at]
                describeInet(id, inet)
                if inet.protocol == .udp, inet.state == "ESTABLISHED" { connectUDP(id, inet, table: table) }
                guard inet.protocol == .tcp, inet.state != "LISTEN", inet.state != "CLOSE" else { continue }
                connectTCP(id, inet, index.byEnds, table: table)
            case .unix(let at):
                let unix = table.unix[at]
                describeUnix(id, unix)
                connectUnix(id, unix, index.byInode, table: table)
            case .netlink(let at):
                let netlink = table.netlink[at]
                nodes[id]?.attributes.merge([
                    "protocol": .string("netlink"), "netlink_protocol": .string(netlink.protocol),
                    "port_id": .int(Int64(netlink.portID)), "state": .string(netlink.state),
                ]) { $1 }
            case .packet(let at):
                let packet = table.packet[at]
                var attributes: GraphAttributes = [
                    "protocol": .string("packet"), "type": .string(packet.type),
                    "ethernet_protocol": .int(Int64(packet.ethernetProtocol)),
                ]
                if let interface = packet.interface { attributes["interface"] = .int(Int64(interface)) }
                nodes[id]?.attributes.merge(attributes) { $1 }
                let devices = packet.interface.flatMap { $0 == 0 ? nil : "network interface \($0)" } ?? "every network interface"
                markExternal(id, "packet socket on \(devices): it sends and receives this host's raw network traffic")
            }
        }
    }

    private mutating func describeInet(_ id: String, _ socket: InetSocket) {
        nodes[id]?.attributes.merge([
            "family": .string(socket.family.rawValue), "local": .string(socket.local.description),
            "protocol": .string(socket.protocol.rawValue), "recv_q": .int(Int64(socket.receiveQueue)),
            "remote": .string(socket.remote.description), "send_q": .int(Int64(socket.sendQueue)), "state": .string(socket.state),
            "uid": .int(Int64(socket.uid)),
        ]) { $1 }
    }

    private mutating func describeUnix(_ id: String, _ socket: UnixSocket) {
        var attributes: GraphAttributes = [
            "protocol": .string("unix"), "shutdown": .string(socket.shutdown.rawValue), "state": .string(socket.state),
            "type": .string(socket.type),
        ]
        if let name = socket.name { attributes["name"] = .string(name); attributes["abstract"] = .bool(socket.abstract) }
        if let peer = socket.peerInode { attributes["peer"] = .int(Int64(peer)) }
        if let queue = socket.receiveQueue { attributes["recv_q"] = .int(Int64(queue)) }
        if let queue = socket.sendQueue { attributes["send_q"] = .int(Int64(queue)) }
        if !socket.pendingConnections.isEmpty { attributes["pending"] = .strings(socket.pendingConnections.map(String.init)) }
        nodes[id]?.attributes.merge(attributes) { $1 }
    }

    /// Joins two socket nodes once, from the lower id.
    private mutating func connect(_ a: String, _ b: String, _ attributes: GraphAttributes = [:]) {
        link(min(a, b), max(a, b), .connectedTo, attributes)
    }

    private mutating func connectTCP(_ id: String, _ socket: InetSocket, _ byEnds: [Ends: Int], table: SocketTable) {
        guard let peerAt = byEnds[Ends(local: socket.remote, remote: socket.local)] else {
            markExternal(id, "TCP peer \(socket.remote) is outside this network namespace")
            return
        }
        let peer = table.inet[peerAt]
        if peer.inode != 0 {
            let peerID = "socket:\(peer.inode)"
            if nodes[peerID] != nil { connect(id, peerID) }
            else {
                wanted["socket:[\(peer.inode)]", default: []].append((id, { holder in
                    "TCP peer \(socket.remote) (socket:[\(peer.inode)]) is held by \(holder ?? "no process"), outside the graph"
                }))
            }
            return
        }
        // The peer is a connection a listener has not accept()ed yet.
        let listener = table.inet.first {
            $0.protocol == .tcp && $0.state == "LISTEN" && $0.local.port == peer.local.port
                && ($0.local.address == peer.local.address || $0.local.address == "0.0.0.0" || $0.local.address == "::")
        }
        if let listener, nodes["socket:\(listener.inode)"] != nil {
            link(id, "socket:\(listener.inode)", .connectedTo, ["pending": .bool(true)])
        } else {
            markExternal(id, "TCP peer \(socket.remote) waits to be accepted by a listener outside the graph")
        }
    }

    /// A connected UDP socket sends to and hears from one peer address: the socket bound there
    /// in the namespace (exactly, or to the wildcard address on that port), if any.
    private mutating func connectUDP(_ id: String, _ socket: InetSocket, table: SocketTable) {
        let bound = table.inet.filter { $0.protocol == .udp && $0.family == socket.family && $0.local.port == socket.remote.port }
        guard let peer = bound.first(where: { $0.local.address == socket.remote.address })
                ?? bound.first(where: { $0.local.address == "0.0.0.0" || $0.local.address == "::" }) else {
            markExternal(id, "UDP peer \(socket.remote) is outside this network namespace")
            return
        }
        let peerID = "socket:\(peer.inode)"
        if nodes[peerID] != nil {
            if peerID != id { connect(id, peerID) }
            return
        }
        wanted["socket:[\(peer.inode)]", default: []].append((id, { holder in
            "UDP peer \(socket.remote) (socket:[\(peer.inode)]) is held by \(holder ?? "no process"), outside the graph"
        }))
    }

    private mutating func connectUnix(_ id: String, _ socket: UnixSocket, _ byInode: [UInt64: SocketPlace], table: SocketTable) {
        guard let peer = socket.peerInode else { return }
        if peer != 0 {
            let peerID = "socket:\(peer)"
            if nodes[peerID] != nil { connect(id, peerID); return }
            let name: String
            if case .unix(let at) = byInode[peer], let bound = table.unix[at].name { name = " \(bound)" } else { name = "" }
            wanted["socket:[\(peer)]", default: []].append((id, { holder in
                "UNIX peer socket:[\(peer)]\(name) is held by \(holder ?? "no process"), outside the graph"
            }))
            return
        }
        // Connected to a listener that has not accept()ed the connection yet.
        let listener = table.unix.first { $0.pendingConnections.contains(socket.inode) }
        if let listener, nodes["socket:\(listener.inode)"] != nil {
            link(id, "socket:\(listener.inode)", .connectedTo, ["pending": .bool(true)])
        } else {
            let name = listener?.name.map { " \($0)" } ?? ""
            wanted["socket:[\(listener?.inode ?? 0)]", default: []].append((id, { holder in
                "waits to be accepted by UNIX listener\(name), held by \(holder ?? "no process"), outside the graph"
            }))
        }
    }

    // MARK: epoll and inotify

    private mutating func addWatches() {
        for entry in descriptions {
            let first = entry.holders[0]
            guard let state = processes[first.process].descriptors[first.index].state else { continue }
            let owner = first.key.pid
            let (epoll, inotify): ([EpollWatch]?, [InotifyWatch]?) = switch state {
            case .epoll(let watches): (watches, nil)
            case .inotify(let watches): (nil, watches)
            default: (nil, nil)
            }
            for watch in epoll ?? [] {
                if let target = descriptionOf[FDKey(pid: owner, fd: watch.fd)] {
                    link(entry.object, descriptions[target].id, .watches, ["fd": .int(Int64(watch.fd)), "events": .strings(watch.eventNames)])
                }
            }
            for watch in inotify ?? [] {
                let file = fileID(device: watch.device, inode: watch.inode)
                add(file, .file, ["device": .string(watch.device.description), "inode": .int(Int64(watch.inode))])
                link(entry.object, file, .watches, ["wd": .int(Int64(watch.wd))])
            }
        }
    }

    // MARK: Sharing between processes

    private mutating func addSharing() {
        struct Pair: Hashable { var first: Int32; var second: Int32 }
        var shared: [Pair: [String]] = [:]  // lowest holder → each other holder: descriptions
        for entry in descriptions where entry.holders.count > 1 {
            let pids = Set(entry.holders.map(\.key.pid)).sorted()
            guard pids.count > 1 else { continue }
            for other in pids.dropFirst() { shared[Pair(first: pids[0], second: other), default: []].append(entry.id) }
        }
        for (pair, ids) in shared {
            link(Self.processID(pair.first), Self.processID(pair.second), .shares,
                 ["what": .string("descriptions"), "descriptions": .strings(ids.sorted())])
        }
    }

    // MARK: SysV shared memory

    /// Marks a segment external when more mappings attach it (the kernel's count, `nattch`)
    /// than the graph's address spaces hold: some process outside the graph attaches it too.
    private mutating func addSharedMemoryHolders() {
        let outside = sharedMemory.filter { segment in
            attachments[segment.shmid].map { segment.attachCount > $0 } ?? false
        }
        guard !outside.isEmpty else { return }
        let holders = options.resolveOutsideHolders
            ? ProcessReader.sharedMemoryAttachers(Set(outside.map(\.shmid)), excluding: Set(processes.map(\.pid))) : [:]
        for segment in outside {
            let count = segment.attachCount - attachments[segment.shmid]!
            let who = holders[segment.shmid].map { "by \($0)" } ?? "by \(count) mapping(s)"
            markExternal("sysv-segment:\(segment.shmid)", "SysV segment \(segment.shmid) is also attached \(who), outside the graph")
        }
    }

    // MARK: Outside the graph

    /// Names the holders of the pipe ends and socket peers the graph lacks, by one scan of the
    /// other processes' descriptor links, and marks what they tie to as external.
    private mutating func resolveOutside() {
        guard !wanted.isEmpty else { return }
        var holders: [String: String] = [:]
        if options.resolveOutsideHolders {
            let members = Set(processes.map(\.pid))
            holders = ProcessReader.holders(of: Set(wanted.keys), excluding: members)
        }
        for (link, entries) in wanted.sorted(by: { $0.key < $1.key }) {
            let holder = holders[link]
            for entry in entries {
                let reason = entry.reason(holder)
                // A pipe end found nowhere is closed: nothing outside to worry about.
                if reason.isEmpty {
                    if !options.resolveOutsideHolders { markExternal(entry.node, "\(link) has an end outside the graph (not resolved)") }
                    continue
                }
                markExternal(entry.node, reason)
            }
        }
    }
}
