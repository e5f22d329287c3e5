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
    /// gives each end its options and `O_NONBLOCK`, and refills each end's queue by sending its
    /// bytes from a copy of the other end. Returns the parked slot of each end, by inode.
    /// `peers`: descriptors of other members of a tree, where the far end of a pair may be.
    func createSocketPairs(_ descriptors: [OpenDescriptor], peers: [OpenDescriptor] = [], states: [UInt64: SocketRestoreState],
                           next: inout UInt64, area: WorkArea) throws -> [UInt64: UInt64] {
        var parked: [UInt64: UInt64] = [:]
        for descriptor in descriptors where descriptor.kind == .socket && parked[descriptor.inode] == nil {
            guard let state = states[descriptor.inode], state.isUnix, let peerInode = state.peerInode,
                  let peer = states[peerInode], let peerDescriptor = descriptors.first(where: { $0.inode == peerInode }) ?? peers.first(where: { $0.inode == peerInode })
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
            for (end, endState, other) in [(descriptor, state, peerDescriptor), (peerDescriptor, peer, descriptor)] {
                let slot = parked[end.inode]!
                try setOptions(slot, endState, name: "the unix socket of fd \(end.fd)")
                // Bytes waiting at this end were sent by the other: send them again from there.
                let datagrams = endState.queued ?? []
                if !datagrams.isEmpty {
                    try withCopy(of: parked[other.inode]!, step: "refilling the queue of fd \(end.fd)") { copy throws(Errno) in
                        for datagram in datagrams { try Kernel.writeAll(copy, Array(datagram)) }
                    }
                }
            }
            for end in [descriptor, peerDescriptor] where end.flags & UInt32(Linux.O_NONBLOCK) != 0 {
                try huskCall("making fd \(end.fd) non-blocking", SyscallNumber.fcntl,
                             [parked[end.inode]!, UInt64(Linux.F_SETFL), UInt64(Linux.O_NONBLOCK)])
            }
        }
        return parked
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
        guard peer.peerInode == state.inode, state.local == nil, peer.local == nil else {
            return "connected to a named socket (socket:[\(peerInode)]); only socketpairs are restored yet"
        }
        return nil
    }
}
