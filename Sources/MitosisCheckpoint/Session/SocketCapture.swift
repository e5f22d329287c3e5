import Foundation
import MitosisKernel
import MitosisModel
import SystemPackage

/// Reads, at the freeze, what a restore needs of each socket the process holds, through a copy
/// of its descriptor taken with `pidfd_getfd` (the same socket: no injection). The peers of unix
/// sockets come from sock_diag. Only queue contents of unix sockets are kept (peeked, left in
/// place, with their credentials and the descriptors in flight); an inet socket's queued data
/// belongs to connections, which are not restored here.
enum SocketCapture {
    /// Unread bytes kept per unix socket at most; a restore refuses a socket whose queue held more.
    static let queueLimit = 4 << 20

    /// Descriptors a queued message carries, as the peek installed them in this process: the
    /// socket's inode, the message's index in its `queued`, the descriptors in order.
    struct Received {
        var inode: UInt64
        var message: Int
        var rights: [FileDescriptor]
    }

    /// `pid`'s sockets among `descriptors`; `namespaceOf` is the process whose network namespace
    /// sock_diag asks (the owner's, when `pid` is Mitosis reading descriptors in flight). The
    /// descriptors in flight come back open in `received`: the caller closes them.
    static func capture(pid: Int32, descriptors: [OpenDescriptor], namespaceOf: Int32? = nil,
                        received: inout [Received]) throws -> [SocketRestoreState] {
        let sockets = descriptors.filter { $0.kind == .socket }
        guard !sockets.isEmpty else { return [] }
        let pidfd = try Kernel.pidfdOpen(pid, task: Kernel.procEntry(pid))
        defer { try? pidfd.close() }
        var unixTable: [UInt64: UnixSocket]?
        var states: [SocketRestoreState] = []
        for descriptor in sockets where !states.contains(where: { $0.inode == descriptor.inode }) {
            let copy = try Kernel.pidfdGetfd(pidfd, descriptor.fd)
            defer { try? copy.close() }
            let kind = try Kernel.socketKind(copy)
            let tcp = kind.domain != Linux.AF_UNIX && kind.type == Linux.SOCK_STREAM
            let packet = kind.domain == 17  // AF_PACKET: its binding is `packet`
            var options: [SocketOption] = []
            for option in RestorableSocketOption.all where option.applies(domain: kind.domain, tcp: tcp) {
                guard let value = try? Kernel.socketOption(copy, level: option.level, name: option.name) else { continue }
                options.append(SocketOption(level: option.level, name: option.name, label: option.label, value: value))
            }
            var state = SocketRestoreState(
                inode: descriptor.inode, domain: kind.domain, type: kind.type, protocol: kind.protocol,
                local: packet ? nil : try Kernel.socketAddress(copy, peer: false),
                peer: packet ? nil : try Kernel.socketAddress(copy, peer: true),  // a packet socket has no peer (EOPNOTSUPP)
                listening: kind.listening, backlog: nil, tcpState: nil, options: options)
            if tcp {
                let info = try Kernel.tcpState(copy)
                state.tcpState = info.state
                if kind.listening { state.backlog = info.backlog }
                if info.state == 7, !kind.listening, state.peer == nil { state.endedPeer = try Kernel.formerPeer(copy, domain: kind.domain) }
            }
            if packet { state.packet = try Kernel.packetBinding(copy) }
            if kind.domain == Linux.AF_UNIX {
                if unixTable == nil {
                    let table = try SockDiag(networkNamespaceOf: Kernel.procEntry(namespaceOf ?? pid)).table()
                    unixTable = Dictionary(table.unix.map { ($0.inode, $0) }, uniquingKeysWith: { a, _ in a })
                }
                let diag = unixTable?[descriptor.inode]
                state.peerInode = diag?.peerInode.flatMap { $0 == 0 ? nil : $0 }
                if kind.listening {
                    state.backlog = diag?.sendQueue  // a unix listener's backlog is its write-queue figure
                } else {
                    if let messages = try Kernel.peekMessages(copy, stream: kind.type == Linux.SOCK_STREAM, limit: queueLimit) {
                        state.queued = messages.map(\.bytes)
                        state.ancillary = messages.map { QueuedAncillary(rights: $0.rights.isEmpty ? nil : [], credentials: $0.credentials) }
                        for (index, message) in messages.enumerated() where !message.rights.isEmpty {
                            received.append(Received(inode: descriptor.inode, message: index, rights: message.rights))
                        }
                    }
                }
            }
            states.append(state)
        }
        return states
    }

    /// Reads again, once the connections were captured under the network lock, the TCP
    /// sockets of `record` that are neither listening nor among `uncaptured`'s connections: a
    /// client that hung up between the two reads changed its connection's state (ESTABLISHED to
    /// CLOSE-WAIT or CLOSE), and the record must say what the capture saw.
    static func reread(uncaptured captured: [CapturedConnection], in record: inout RestoreRecord, pid: Int32,
                       descriptors: [OpenDescriptor]) throws {
        let capturedInodes = Set(captured.map(\.inode))
        let stale = Set((record.sockets ?? []).filter { $0.isInet && $0.type == Linux.SOCK_STREAM && !$0.listening && !capturedInodes.contains($0.inode) }.map(\.inode))
        guard !stale.isEmpty else { return }
        var received: [Received] = []  // inet sockets carry no descriptors
        let fresh = try capture(pid: pid, descriptors: descriptors.filter { stale.contains($0.inode) }, received: &received)
        record.sockets = record.sockets?.map { old in fresh.first { $0.inode == old.inode } ?? old }
    }
}
