import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Unix sockets: socketpairs with both ends in the process (created together, their queued
/// data sent again from the other end), named listeners (bound again, after a stale socket file
/// is removed), and unconnected sockets, named or not.
extension Tracer {
    /// Creates every socketpair the process holds, parks both ends at `next` and up (like pipes),
    /// gives each end its options and `O_NONBLOCK`. Returns the parked slot of each end, by
    /// inode; their queues are refilled once every descriptor exists (`refillUnixQueues`: a
    /// message may carry any of them).
    /// `peers`: descriptors of other members of a tree, where the far end of a pair may be.
    func createSocketPairs(_ descriptors: [OpenDescriptor], peers: [OpenDescriptor] = [], states: [UInt64: SocketRestoreState],
                           next: inout UInt64, area: WorkArea) throws -> [UInt64: UInt64] {
        var parked: [UInt64: UInt64] = [:]
        for descriptor in descriptors where descriptor.kind == .socket && parked[descriptor.inode] == nil {
            guard let state = states[descriptor.inode], state.isUnix, let peerInode = state.peerInode,
                  let peer = states[peerInode], state.local == nil, peer.local == nil, let peerDescriptor = descriptors.first(where: { $0.inode == peerInode }) ?? peers.first(where: { $0.inode == peerInode })
            else { continue }
            let step = "creating the \(state.typeName) socketpair of fds \(descriptor.fd) and \(peerDescriptor.fd)"
            try huskCall(step, SyscallNumber.socketpair, [UInt64(state.domain), UInt64(state.type), 0, area.scratch + WorkArea.text])
            var pair: (Int32, Int32) = (0, 0)
            let count = (try? withUnsafeMutableBytes(of: &pair) { buffer throws(Errno) in
                try Kernel.readMemory(pid: pid, address: area.scratch + WorkArea.text, into: buffer)
            }) ?? 0
            guard count == 8 else { throw StepFailure(step: step, detail: "cannot read the new descriptors") }
            for (fd, end) in [(pair.0, descriptor), (pair.1, peerDescriptor)] {
                let slot = next
                next += 1
                try huskCall(step, SyscallNumber.dup3, [UInt64(fd), slot, 0])
                try huskCall(step, SyscallNumber.close, [UInt64(fd)])
                parked[end.inode] = slot
            }
            for (end, endState) in [(descriptor, state), (peerDescriptor, peer)] {
                try setOptions(parked[end.inode]!, endState, name: "the unix socket of fd \(end.fd)")
            }
            for end in [descriptor, peerDescriptor] where end.flags & UInt32(Linux.O_NONBLOCK) != 0 {
                try huskCall("making fd \(end.fd) non-blocking", SyscallNumber.fcntl,
                             [parked[end.inode]!, UInt64(Linux.F_SETFL), UInt64(Linux.O_NONBLOCK)])
            }
        }
        return parked
    }

    /// Sends the messages queued at each end of each socketpair again, from a copy of the other
    /// end, in order, each with the descriptors it carried (the restored ones: by then every
    /// descriptor, in flight or not, exists at its number) and the credentials the receiver read.
    /// Credentials are given explicitly (Mitosis may give any, as root); the process's own pid is
    /// the husk's as Mitosis sees it (another one with `--pidns`). A message that came with none
    /// (pid 0) is sent with `SO_PASSCRED` off at both ends for the moment, so that the kernel
    /// attaches none either. Images without ancillary data get their bytes only, as before.
    func refillUnixQueues(_ descriptors: [OpenDescriptor], peers: [OpenDescriptor], states: [UInt64: SocketRestoreState],
                          parked: [UInt64: UInt64], imagePid: Int32) throws {
        var done: Set<UInt64> = []
        for descriptor in descriptors + peers where descriptor.kind == .socket && parked[descriptor.inode] != nil && !done.contains(descriptor.inode) {
            done.insert(descriptor.inode)
            guard let state = states[descriptor.inode], let peerInode = state.peerInode, let sender = parked[peerInode] else { continue }
            let messages = state.queued ?? []
            guard !messages.isEmpty else { continue }
            let step = "refilling the queue of fd \(descriptor.fd)"
            do {
                let pidfd = try Kernel.pidfdOpen(pid)
                defer { try? pidfd.close() }
                let from = try Kernel.pidfdGetfd(pidfd, Int32(sender))
                defer { try? from.close() }
                let to = try Kernel.pidfdGetfd(pidfd, Int32(parked[descriptor.inode]!))
                defer { try? to.close() }
                for (index, bytes) in messages.enumerated() {
                    let ancillary = state.ancillary?[index]
                    var rights: [FileDescriptor] = []
                    defer { for right in rights { try? right.close() } }
                    for number in ancillary?.rights ?? [] { rights.append(try Kernel.pidfdGetfd(pidfd, number)) }
                    var credentials = ancillary?.credentials
                    if credentials?.pid == imagePid { credentials?.pid = pid }
                    guard let given = credentials, given.pid == 0 else {
                        try Kernel.sendMessage(from, bytes, rights: rights, credentials: credentials,
                                               rightsOnLastByte: state.type == Linux.SOCK_STREAM)
                        continue
                    }
                    // None attached: the kernel attaches the sender's own unless neither end asks.
                    let saved = (try Kernel.socketOption(from, level: Linux.SOL_SOCKET, name: Linux.SO_PASSCRED),
                                 try Kernel.socketOption(to, level: Linux.SOL_SOCKET, name: Linux.SO_PASSCRED))
                    try Kernel.setSocketOption(from, level: Linux.SOL_SOCKET, name: Linux.SO_PASSCRED, value: 0)
                    try Kernel.setSocketOption(to, level: Linux.SOL_SOCKET, name: Linux.SO_PASSCRED, value: 0)
                    defer {
                        try? Kernel.setSocketOption(from, level: Linux.SOL_SOCKET, name: Linux.SO_PASSCRED, value: saved.0)
                        try? Kernel.setSocketOption(to, level: Linux.SOL_SOCKET, name: Linux.SO_PASSCRED, value: saved.1)
                    }
                    try Kernel.sendMessage(from, bytes, rights: rights, credentials: nil, rightsOnLastByte: state.type == Linux.SOCK_STREAM)
                }
            } catch {
                throw StepFailure(step: step, detail: "\(error)")
            }
        }
    }

    /// Two connected unix stream sockets of the process, the client connected through a named
    /// listener the process also holds, and the end that listener accepted.
    struct NamedConnection {
        var client: OpenDescriptor
        var clientState: SocketRestoreState
        var server: OpenDescriptor
        var serverState: SocketRestoreState
        var listener: OpenDescriptor
    }

    /// The connections among `descriptors` made through a listener among them: the client's
    /// peer name is the listener's name, the accepted end's own name is it too.
    static func namedConnections(_ descriptors: [OpenDescriptor], states: [UInt64: SocketRestoreState]) -> [NamedConnection] {
        var found: [NamedConnection] = []
        for client in descriptors where client.kind == .socket {
            guard let clientState = states[client.inode], clientState.isUnix, !clientState.listening,
                  let name = clientState.peer, let peerInode = clientState.peerInode,
                  let serverState = states[peerInode], serverState.peerInode == client.inode, serverState.local == name,
                  let server = descriptors.first(where: { $0.inode == peerInode }),
                  let listener = descriptors.first(where: { candidate in
                      states[candidate.inode].map { $0.isUnix && $0.listening && $0.local == name && $0.type == clientState.type } ?? false }),
                  !found.contains(where: { $0.client.inode == client.inode })
            else { continue }
            found.append(NamedConnection(client: client, clientState: clientState, server: server, serverState: serverState, listener: listener))
        }
        return found
    }

    /// Makes a named connection again as the process made it: a socket created (and bound, if
    /// the client had a name), connected to the listener's name by an injected `connect`, and
    /// the other end taken by an injected `accept4` on the restored listener (whose queue is
    /// empty: a restored listener's pending connections are not kept). Both ends are moved to
    /// their numbers; returns them.
    func connectThroughListener(_ connection: NamedConnection, descriptors: [OpenDescriptor], area: WorkArea) throws -> (client: UInt64, server: UInt64) {
        let clientFd = try createUnixSocket(connection.client, connection.clientState, area: area)
        try connectOrBind(clientFd, to: connection.clientState.peer!, connection.clientState,
                          name: "the unix \(connection.clientState.typeName) socket of fd \(connection.client.fd)", call: SyscallNumber.connect, area: area)
        let flags = UInt64(connection.server.flags & UInt32(Linux.O_NONBLOCK | Linux.O_CLOEXEC))
        let serverFd = try huskCall("accepting the connection of fd \(connection.client.fd) on the listener of fd \(connection.listener.fd)",
                                    SyscallNumber.accept4, [UInt64(connection.listener.fd), 0, 0, flags])
        try setOptions(serverFd, connection.serverState, name: "the unix socket of fd \(connection.server.fd)")
        var placed: (client: UInt64, server: UInt64) = (clientFd, serverFd)
        for (end, fd) in [(connection.client, clientFd), (connection.server, serverFd)] {
            let cloexec = UInt64(end.flags & UInt32(Linux.O_CLOEXEC))
            var current = fd
            if current != UInt64(end.fd) {
                try huskCall("moving fd \(current) to \(end.fd)", SyscallNumber.dup3, [current, UInt64(end.fd), cloexec])
                try huskCall("closing fd \(current)", SyscallNumber.close, [current])
                if end.inode == connection.client.inode, placed.server == UInt64(end.fd) {
                    throw StepFailure(step: "placing fd \(end.fd)", detail: "its number was taken by the accepted socket")
                }
                current = UInt64(end.fd)
            }
            if end.inode == connection.client.inode { placed.client = current } else { placed.server = current }
            // Further descriptors of the same socket are dups of this one.
            for other in descriptors where other.inode == end.inode && other.fd != end.fd {
                try huskCall("duplicating fd \(end.fd) as fd \(other.fd)", SyscallNumber.dup3,
                             [current, UInt64(other.fd), UInt64(other.flags & UInt32(Linux.O_CLOEXEC))])
            }
        }
        return placed
    }

    /// A unix socket without a peer: created, given its options, bound to its name (a stale
    /// socket file left by the original is removed first), made to listen with its backlog.
    func createUnixSocket(_ descriptor: OpenDescriptor, _ state: SocketRestoreState, area: WorkArea) throws -> UInt64 {
        let name = "the unix \(state.typeName) socket of fd \(descriptor.fd)"
        let fd = try createSocket(descriptor, state, name: name)
        try setOptions(fd, state, name: name)
        if let local = state.local {
            if !local.isAbstract { try removeStaleSocketFile(local, type: state.type, name: name) }
            try connectOrBind(fd, to: local, state, name: name, call: SyscallNumber.bind, area: area)
        }
        if state.listening {
            try huskCall("listening on \(name) (backlog \(state.backlog ?? 0))", SyscallNumber.listen, [fd, UInt64(state.backlog ?? 0)])
        }
        return fd
    }

    /// The socket file a bound unix socket leaves behind when its process is killed blocks a
    /// new bind (`EADDRINUSE`). It is removed only when it is stale: a socket file on which
    /// nobody accepts connections (CRIU's restore unlinks the same way). A file that is not a
    /// socket, or a socket someone answers on, stops the restore instead. A relative name is
    /// resolved as the husk resolves it: against its working directory.
    func removeStaleSocketFile(_ address: SocketAddress, type: Int32, name: String) throws {
        let path = address.description
        let resolved = path.hasPrefix("/") ? path : "/proc/\(pid)/cwd/\(path)"
        guard let status = try? Kernel.linkStatusAt(nil, resolved) else { return }
        let step = "binding \(name) to \(path)"
        guard status.type == .socket else { throw StepFailure(step: step, detail: "\(path) exists and is not a socket") }
        let answers: Bool
        do { answers = try Kernel.unixSocketAnswers(resolved, type: type) } catch {
            throw StepFailure(step: step, detail: "probing the socket file \(path): \(error)")
        }
        if answers { throw StepFailure(step: step, detail: "another process listens on \(path)") }
        do { try Kernel.unlinkAt(nil, resolved) } catch {
            throw StepFailure(step: step, detail: "removing the stale socket file \(path): \(error)")
        }
    }
}

extension RestorePlan {
    /// Why a unix socket cannot be restored, or nil. `held` are the process's sockets by inode.
    static func unixSocketProblem(_ state: SocketRestoreState, held: [UInt64: SocketRestoreState]) -> String? {
        if let problem = optionProblem(state) { return problem }
        guard [Linux.SOCK_STREAM, Linux.SOCK_DGRAM, Linux.SOCK_SEQPACKET].contains(state.type), state.protocol == 0 else {
            return "unix sockets of type \(state.type) are not restorable"
        }
        if let local = state.local, Kernel.encodeAddress(local, domain: state.domain) == nil { return "its name \(local) is not a unix socket name" }
        if state.listening { return state.local == nil ? "a listener without a name" : nil }
        guard state.queued != nil else {
            return "its queue held more than \(4 << 20) bytes, which the checkpoint does not keep"
        }
        guard let peerInode = state.peerInode else { return nil }
        guard let peer = held[peerInode] else {
            return "its peer socket:[\(peerInode)] is outside the process; restoring it needs that process too"
        }
        guard peer.peerInode == state.inode else {
            return "its peer socket:[\(peerInode)] is connected elsewhere"
        }
        if state.local == nil && peer.local == nil { return nil }  // a socketpair
        // A connection through a named listener the process holds (either end).
        let (client, server) = state.peer != nil && peer.local == state.peer ? (state, peer) : (peer, state)
        guard state.type == Linux.SOCK_STREAM || state.type == Linux.SOCK_SEQPACKET, let name = client.peer, server.local == name,
              held.values.contains(where: { $0.listening && $0.local == name && $0.type == state.type }) else {
            return "connected to the named socket \(peer.local?.description ?? state.peer?.description ?? "?") (socket:[\(peerInode)]) through a listener the process does not hold; only socketpairs and connections through the process's own listeners are restored"
        }
        return nil
    }

    /// Why the ancillary data recorded with a unix socket's queue cannot be sent again, or nil:
    /// it must match the queue message for message (an image is hostile input), name only
    /// descriptors the image holds, at most 253 per message (`SCM_MAX_FD`), and credentials of
    /// a process that exists here (the kernel accepts only a live pid in `SCM_CREDENTIALS`):
    /// the process itself, or one still running.
    static func queuedAncillaryProblem(_ state: SocketRestoreState, numbers: Set<Int32>, imagePid: Int32) -> String? {
        guard let ancillary = state.ancillary else { return nil }
        guard ancillary.count == (state.queued ?? []).count else {
            return "\(ancillary.count) ancillary records for \((state.queued ?? []).count) queued messages"
        }
        for (index, entry) in ancillary.enumerated() {
            let rights = entry.rights ?? []
            if rights.count > 253 { return "queued message \(index) carries \(rights.count) descriptors, more than a message can (253)" }
            if let missing = rights.first(where: { !numbers.contains($0) }) {
                return "queued message \(index) carries fd \(missing), which the image does not hold"
            }
            guard let credentials = entry.credentials, credentials.pid != 0, credentials.pid != imagePid else { continue }
            if credentials.pid < 0 || !Kernel.processExists(credentials.pid) {
                return "queued message \(index) carries the credentials of process \(credentials.pid), which does not exist here (the kernel sends only a live process's)"
            }
        }
        return nil
    }
}
