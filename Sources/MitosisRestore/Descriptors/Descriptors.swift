import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 4: descriptors, in ascending order. Each kind has its file beside this one.
extension Tracer {
    /// Creates every descriptor again at its number, in ascending order: a new descriptor
    /// takes the lowest free number, never above the one wanted, and is then moved there.
    /// Established connections are left in repair mode, in `connections`, for `finishConnections`.
    func restoreDescriptors(_ plan: RestorePlan, area: WorkArea, connections: inout [PendingConnection]) throws {
        // Descriptors in flight are made like the rest, at their numbers above the process's,
        // carried by the messages sent again, and closed.
        let inFlight = plan.record.inFlight ?? []
        let descriptors = ((plan.manifest.descriptors ?? []) + inFlight).sorted(by: { $0.fd < $1.fd })
        let sockets = Dictionary((plan.record.sockets ?? []).map { ($0.inode, $0) }, uniquingKeysWith: { a, _ in a })
        // Objects with two ends first (pipes, socketpairs), both ends parked above every number
        // wanted, so that no temporary descriptor sits on a number another descriptor needs.
        var next = UInt64(descriptors.last?.fd ?? 0) + 1
        // In a tree, what an earlier member created is taken from it, and the far ends of pipes
        // and socketpairs created here for later members are created with the rest.
        let links = plan.tree
        let imported = links?.imports ?? [:]
        let created = descriptors.filter { imported[$0.fd] == nil }
        let pipes = (plan.record.pipes ?? []).filter { pipe in created.contains { $0.kind == .pipe && $0.inode == pipe.inode } }
        let parked = try createPipes(created + (links?.foreign ?? []).filter { $0.kind == .pipe }, contents: pipes, next: &next, area: area)
        let keepers = try openFifoKeepers(created, next: &next, area: area)
        let pairStates = sockets.merging(links?.foreignSockets ?? [:], uniquingKeysWith: { a, _ in a })
        let parkedPairs = try createSocketPairs(created, peers: links?.foreign ?? [], states: pairStates, next: &next, area: area)
        // Connections made through a named listener of the process are made again the same way,
        // once every other descriptor (the listener too) exists: they are left out of the loop.
        let namedConnections = Self.namedConnections(created, states: sockets)
        let deferred = Set(namedConnections.flatMap { [$0.client.inode, $0.server.inode] })
        // A descriptor sharing its open file description with a lower one is a dup of it: the
        // pairs kcmp found at the checkpoint, and every further descriptor of one socket (a
        // socket has a single open file description).
        var sameAs = Dictionary((plan.record.sharedDescriptions ?? []).map { ($0.fd, $0.sameAs) }, uniquingKeysWith: { a, _ in a })
        var firstOfSocket: [UInt64: Int32] = [:]
        for descriptor in descriptors where descriptor.kind == .socket {
            if let first = firstOfSocket[descriptor.inode] { sameAs[descriptor.fd] = first } else { firstOfSocket[descriptor.inode] = descriptor.fd }
        }
        let timers = Dictionary((plan.record.timerfds ?? []).map { ($0.fd, $0) }, uniquingKeysWith: { a, _ in a })
        let contents = Dictionary((plan.record.fileContents ?? []).map { ($0.fd, $0) }, uniquingKeysWith: { a, _ in a })
        for descriptor in descriptors {
            let fd: UInt64
            if descriptor.kind == .socket, deferred.contains(descriptor.inode) { continue }
            if let first = sameAs[descriptor.fd], first < descriptor.fd {
                try huskCall("duplicating fd \(first) as fd \(descriptor.fd)", SyscallNumber.dup3,
                             [UInt64(first), UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
                continue
            }
            if let key = imported[descriptor.fd], let links {
                let taken = try importDescription(key, for: descriptor.fd, pool: links.pool, area: area)
                let cloexec = UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))
                if taken != UInt64(descriptor.fd) {
                    try huskCall("moving fd \(taken) to \(descriptor.fd)", SyscallNumber.dup3, [taken, UInt64(descriptor.fd), cloexec])
                    try huskCall("closing fd \(taken)", SyscallNumber.close, [taken])
                } else if cloexec == 0 {
                    try huskCall("clearing close-on-exec of fd \(taken)", SyscallNumber.fcntl, [taken, 2 /* F_SETFD */, 0])
                }
                continue
            }
            switch descriptor.kind {
            case .pipe:
                let end = parked[PipeEnd(inode: descriptor.inode, write: descriptor.flags & 3 == 1)]!
                try huskCall("placing the pipe end fd \(descriptor.fd)", SyscallNumber.dup3,
                             [end, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
                continue
            case .eventfd:
                fd = try createEventfd(descriptor, area: area)
            case .epoll:
                fd = try huskCall("creating the epoll of fd \(descriptor.fd)", SyscallNumber.epoll_create1,
                                  [UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
            case .socket:
                if let end = parkedPairs[descriptor.inode] {
                    try huskCall("placing the socketpair end fd \(descriptor.fd)", SyscallNumber.dup3,
                                 [end, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
                    continue
                }
                if let captured = plan.record.connections?.first(where: { $0.inode == descriptor.inode }) {
                    let created = try createConnection(descriptor, captured)
                    connections.append(created.pending)
                    fd = created.fd
                    break
                }
                guard let state = sockets[descriptor.inode] else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no socket state") }
                fd = state.isUnix ? try createUnixSocket(descriptor, state, area: area)
                    : state.isPacket ? try createPacketSocket(descriptor, state, area: area) : try createInetSocket(descriptor, state, area: area)
            case .timerfd:
                guard let timer = timers[descriptor.fd] else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no timer state") }
                fd = try createTimerfd(descriptor, timer, inTimeNamespace: plan.timeNamespace)
            case .signalfd:
                guard let state = descriptor.signalfd else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no signal mask") }
                fd = try createSignalfd(descriptor, state, area: area)
            case .memfd:
                guard let contents = contents[descriptor.fd] else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no content") }
                fd = try createMemfd(descriptor, contents, area: area)
            case .fifo:
                fd = try openFifo(descriptor, area: area)
            case .inotify:
                fd = try createInotify(descriptor, paths: (plan.record.inotifyWatches ?? []).filter { $0.fd == descriptor.fd }, area: area)
            case .file where descriptor.deleted:
                guard let contents = contents[descriptor.fd] else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no content") }
                fd = try createDeletedFile(descriptor, contents, area: area)
            default:
                fd = try openFile(descriptor, area: area)
            }
            if fd != UInt64(descriptor.fd) {
                try huskCall("moving fd \(fd) to \(descriptor.fd)", SyscallNumber.dup3,
                             [fd, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
                try huskCall("closing fd \(fd)", SyscallNumber.close, [fd])
            }
        }
        var connected = parkedPairs
        for connection in namedConnections {
            let placed = try connectThroughListener(connection, descriptors: descriptors, area: area)
            connected[connection.client.inode] = placed.client
            connected[connection.server.inode] = placed.server
        }
        try refillFifos(created, contents: plan.record.pipes ?? [], keepers: keepers)
        try refillUnixQueues(created, peers: links?.foreign ?? [], states: pairStates, parked: connected, imagePid: plan.manifest.pid)
        if let links { try exportDescriptions(links, descriptors: descriptors, parkedPipes: parked, parkedPairs: parkedPairs) }
        for descriptor in inFlight {
            try huskCall("closing the descriptor in flight \(descriptor.fd)", SyscallNumber.close, [UInt64(descriptor.fd)])
        }
        for end in Array(parked.values) + Array(parkedPairs.values) + Array(keepers.values) {
            try huskCall("closing the parked end \(end)", SyscallNumber.close, [end])
        }
        // Watches last, once every watched descriptor exists, and by injection: the kernel keys
        // a watch by the caller's fd number, so they must be added from the process's own table.
        for descriptor in created where descriptor.kind == .epoll {
            for watch in descriptor.epoll ?? [] {
                var event = [UInt8](repeating: 0, count: 12)  // struct epoll_event is packed on x86-64
                withUnsafeBytes(of: watch.events.littleEndian) { event.replaceSubrange(0..<4, with: $0) }
                withUnsafeBytes(of: watch.data.littleEndian) { event.replaceSubrange(4..<12, with: $0) }
                try event.withUnsafeBytes { try huskWrite("passing an epoll event", area.scratch + WorkArea.text, $0) }
                try huskCall("adding fd \(watch.fd) to the epoll of fd \(descriptor.fd)", SyscallNumber.epoll_ctl,
                             [UInt64(descriptor.fd), 1 /* EPOLL_CTL_ADD */, UInt64(watch.fd), area.scratch + WorkArea.text])
            }
        }
    }
}
