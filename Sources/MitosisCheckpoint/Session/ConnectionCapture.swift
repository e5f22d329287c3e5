import Foundation
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// The established TCP connections of a frozen process, captured with TCP repair through
/// `pidfd_getfd` copies of its sockets (the same sockets: nothing is injected).
///
/// The network lock comes first: a frozen process's kernel still receives for it, and a segment
/// arriving between two reads would tear the state. Then each connection goes into repair mode,
/// is read, and leaves repair mode without a window probe, before the thaw: a process in repair
/// mode would see `EPERM` from its reads. What follows depends on the checkpoint:
/// - the process runs on (`resume`): the lock is lifted; the peers saw a pause of the freeze's
///   length, and TCP retransmits what the lock dropped;
/// - the process is being moved (`dump --kill`): the lock stays, so nothing it does after the
///   image reaches its peers; `hold` copies the lock into a table that outlives Mitosis, which
///   the restore lifts; `silence` puts the sockets back in repair mode right before the kill,
///   which then closes them without a FIN or RST and leaves no socket holding the 4-tuple (the
///   copies keep each socket open until then, even if the process closes its descriptor);
///   `close` lets go of them once the process is dead.
/// Should the checkpoint fail, `resume` gives the process its connections back untouched.
final class ConnectionCapture: @unchecked Sendable {
    private(set) var connections: [CapturedConnection] = []
    /// Copies of the captured sockets, with what was read from each.
    private var repaired: [(copy: FileDescriptor, connection: TcpConnection)] = []
    private var lock: NetworkLock?

    /// Captures every established TCP connection among `descriptors` (each socket once, however
    /// many descriptors refer to it); locks them first unless `lockNetwork` is false.
    /// On failure, everything taken so far is given back.
    init(target: TargetProcess, descriptors: [OpenDescriptor], lockNetwork: Bool) throws {
        var copies: [(inode: UInt64, copy: FileDescriptor)] = []
        do {
            for descriptor in descriptors where descriptor.kind == .socket && !copies.contains(where: { $0.inode == descriptor.inode }) {
                let copy = try Kernel.pidfdGetfd(target.process.pidfd, descriptor.fd)
                if TcpRepair.isEstablished(copy) { copies.append((descriptor.inode, copy)) } else { try? copy.close() }
            }
            guard !copies.isEmpty else { return }
            if lockNetwork {
                var ends: [(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint)] = []
                for (_, copy) in copies {
                    let local = try TcpRepair.endpoint(copy, peer: false), remote = try TcpRepair.endpoint(copy, peer: true)
                    ends.append((local.family, local.endpoint, remote.endpoint))
                }
                lock = try NetworkLock(ends, namespacePath: "/proc/\(target.pid)/ns/net")
            }
            for (inode, copy) in copies {
                let connection = try TcpRepair.capture(copy, stayInRepair: false)
                repaired.append((copy, connection))
                connections.append(CapturedConnection(inode: inode, connection: connection))
            }
        } catch {
            for (_, copy) in copies where !repaired.contains(where: { $0.copy == copy }) { try? copy.close() }
            resume()
            throw error
        }
    }

    /// The process keeps its connections: the copies closed, the lock lifted. Idempotent.
    func resume() {
        for (copy, _) in repaired { try? copy.close() }
        repaired = []
        if let held { try? NetworkLock.remove(held.table, namespacePath: held.namespacePath) }
        held = nil
        lock?.release()
        lock = nil
    }

    /// Keeps the lock after Mitosis exits, in a table of its own, for the process is about to be
    /// killed and restored later; returns the table's name, or nil when there is no lock to keep.
    func hold(pid: Int32) throws -> String? {
        guard let lock else { return nil }
        let name = "mitosis-hold-\(pid)-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
        try lock.hold(as: name)
        held = (name, "/proc/\(pid)/ns/net")
        return name
    }

    /// The held table and the namespace it is in, until the process is killed.
    private var held: (table: String, namespacePath: String)?

    /// Right before the kill: repair mode on again, so that closing sends nothing.
    func silence() {
        for (copy, _) in repaired { try? TcpRepair.setRepair(copy, .on) }
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
