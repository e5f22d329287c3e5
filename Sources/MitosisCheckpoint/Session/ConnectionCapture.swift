import Foundation
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// The TCP connections of a frozen process (ESTABLISHED and CLOSE-WAIT), captured with TCP
/// repair through `pidfd_getfd` copies of its sockets (the same sockets: nothing is injected).
///
/// The network lock comes first when the process is being moved: a frozen process's kernel
/// still receives for it, and a segment arriving between two reads would tear the state. A
/// process that runs on after the checkpoint is captured without it (`lockNetwork` false), and
/// the capture is checked instead (`unchanged(sockets:)`), then taken again under the lock in the rare
/// case a segment came in between: the lock drops every packet of the connections while it
/// holds, and one dropped packet of a client waiting for its answer costs that client TCP's
/// retransmission timeout (200 ms and more), at every checkpoint — replication takes 20 a
/// second (Docs/replication.md, "The network lock"). The sockets' states were read before it
/// (`SocketCapture`): the session reads the sockets not captured again afterwards
/// (`SocketCapture.reread`), because a client that hangs up during the freeze (its FIN, or its
/// reset) changes its connection's state in between, and the image then named an ESTABLISHED
/// socket without its repair state. Then each connection goes into repair mode,
/// is read, and leaves repair mode without a window probe, before the thaw: a process in repair
/// mode would see `EPERM` from its reads. What follows depends on the checkpoint:
/// - the process runs on (`resume`): the lock is lifted; the peers saw a pause of the freeze's
///   length, and TCP retransmits what the lock dropped;
/// - the process is being moved (`dump --kill`): the lock stays, so nothing it does after the
///   image reaches its peers; `silence`, right before the kill, puts the sockets back in repair mode,
///   which then closes them without a FIN or RST and leaves no socket holding the 4-tuple (the
///   copies keep each socket open until then, even if the process closes its descriptor);
///   `hold`, right after it, copies the lock into a table that outlives Mitosis (named by
///   `reserveHold`), which the restore lifts; `close` lets go of the copies and of the own lock.
/// Should the checkpoint fail, `resume` gives the process its connections back untouched.
final class ConnectionCapture: @unchecked Sendable {
    private(set) var connections: [CapturedConnection] = []
    /// Copies of the captured sockets, with what was read from each.
    private var repaired: [(copy: FileDescriptor, connection: TcpConnection)] = []
    private var lock: NetworkLock?
    /// The lock is the session's, reused at every checkpoint: lifting it keeps its `nft`.
    private let keepsLock: Bool

    /// Captures every established TCP connection among `descriptors` (each socket once, however
    /// many descriptors refer to it); locks them first unless `lockNetwork` is false, with
    /// `prepared` when given (`nft` started before the freeze), which is released when unused —
    /// or, with `keepsLock`, only unlocked, for the caller to use again.
    /// On failure, everything taken so far is given back.
    init(target: TargetProcess, descriptors: [OpenDescriptor], lockNetwork: Bool, prepared: NetworkLock? = nil, keepsLock: Bool = false) throws {
        lock = prepared
        self.keepsLock = keepsLock && prepared != nil
        var copies: [(inode: UInt64, copy: FileDescriptor)] = []
        var closed: [FileDescriptor] = []
        do {
            for descriptor in descriptors where descriptor.kind == .socket && !copies.contains(where: { $0.inode == descriptor.inode }) {
                let copy = try Kernel.pidfdGetfd(target.process.pidfd, descriptor.fd)
                if TcpRepair.isCapturable(copy) { copies.append((descriptor.inode, copy)) } else { try? copy.close() }
            }
            guard !copies.isEmpty else { resume(); return }
            if lockNetwork {
                var ends: [(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint)] = []
                for (_, copy) in copies {
                    // A connection reset since its state was read has no peer any more: it is
                    // left out (the capture below skips it).
                    guard let local = try? TcpRepair.endpoint(copy, peer: false), let remote = try? TcpRepair.endpoint(copy, peer: true) else { continue }
                    ends.append((local.family, local.endpoint, remote.endpoint))
                }
                if lock == nil { lock = try NetworkLock(namespacePath: "/proc/\(Kernel.procEntry(target.pid))/ns/net") }
                try lock?.lock(ends)
            }
            for (inode, copy) in copies {
                // A reset that arrived before the lock took hold closed the connection: nothing
                // to capture, and the socket's state, read after this (`SocketCapture`), says CLOSE.
                guard TcpRepair.isCapturable(copy) else { try? copy.close(); closed.append(copy); continue }
                let connection = try TcpRepair.capture(copy, stayInRepair: false)
                repaired.append((copy, connection))
                connections.append(CapturedConnection(inode: inode, connection: connection))
            }
        } catch {
            for (_, copy) in copies where !repaired.contains(where: { $0.copy == copy }) && !closed.contains(copy) { try? copy.close() }
            resume()
            throw error
        }
    }

    /// The process keeps its connections: out of repair mode (should `silence` have put them
    /// back), the copies closed, the lock lifted. Idempotent.
    func resume() {
        for (copy, connection) in repaired {
            try? TcpRepair.leaveRepair(copy, reuseAddress: connection.socketOptions.reuseAddress)
            try? copy.close()
        }
        repaired = []
        if let held, held.created { try? NetworkLock.remove(held.table, namespacePath: held.namespacePath) }
        held = nil
        if keepsLock { try? lock?.unlock() } else { lock?.release() }
        lock = nil
    }

    /// Whether what was captured without the network lock is one instant of every TCP socket
    /// (`sockets`, the record's, read again after the capture, `SocketCapture.reread`): each connection
    /// captured again reads the same (its timestamp clock aside), and no socket the record calls
    /// ESTABLISHED or CLOSE-WAIT went uncaptured. The owner is frozen, so only segments from the
    /// network change a socket, and every one that matters moves a sequence number, a queue's
    /// length, the window or the state forward (never back): a segment that arrived during the
    /// first capture, or between it and this one, shows as a difference. Then the caller
    /// captures again under the lock.
    func unchanged(sockets: [SocketRestoreState]) -> Bool {
        for (copy, connection) in repaired {
            guard var again = try? TcpRepair.capture(copy, stayInRepair: false) else { return false }
            again.timestamp = connection.timestamp  // the socket's clock, read now: it moves on
            guard again == connection else { return false }
        }
        let captured = Set(connections.map(\.inode))
        return !sockets.contains { socket in
            socket.isInet && socket.type == Linux.SOCK_STREAM && !socket.listening && !captured.contains(socket.inode)
                && socket.tcpState.map(TcpRepair.capturedStates.contains) == true
        }
    }

    /// Names the table that will keep the lock after Mitosis exits, once the process is killed
    /// (`hold`), for the image to record; nil when there is no lock to keep.
    func reserveHold(pid: Int32) -> String? {
        guard lock != nil else { return nil }
        let name = "mitosis-hold-\(pid)-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        held = (name, "/proc/\(pid)/ns/net", false)
        return name
    }

    /// The held table, the namespace it is in, and whether it exists yet.
    private var held: (table: String, namespacePath: String, created: Bool)?

    /// Right before the kill: repair mode on again, so that closing sends nothing.
    func silence() {
        for (copy, _) in repaired { try? TcpRepair.setRepair(copy, .on) }
    }

    /// Right after the kill, while this process's own lock still holds: the held table created.
    /// Not before the kill, so that a Mitosis dying in between leaves no process locked out of
    /// its own connections (its clients then see a reset instead).
    func hold() throws {
        guard let lock, let held else { return }
        try lock.hold(as: held.table)
        self.held?.created = true
    }

    /// After the kill: lets go of the copies (the sockets, in repair mode, close silently) and of
    /// this process's own lock (the held one stays).
    func close() {
        for (copy, _) in repaired { try? copy.close() }
        repaired = []
        held = nil
        lock?.release()
        lock = nil
    }

    deinit { resume() }
}
