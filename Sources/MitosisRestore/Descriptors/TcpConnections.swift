import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Established TCP connections: the socket is created inside the husk (its network namespace,
/// its credentials), then rebuilt from Mitosis through a `pidfd_getfd` copy with TCP repair
/// (`TcpRepair.restore`: sequence numbers, addresses without a handshake, options, queues,
/// window). The socket stays silent in repair mode until `finishConnections`, the last step
/// before the process runs.
extension Tracer {
    /// A connection rebuilt in the husk, waiting for repair mode to end.
    struct PendingConnection {
        var copy: FileDescriptor
        var connection: TcpConnection
    }

    /// Creates the socket of `captured` in the husk and rebuilds the connection in it. Returns
    /// the husk's descriptor and the copy to finish it with.
    func createConnection(_ descriptor: OpenDescriptor, _ captured: CapturedConnection) throws -> (fd: UInt64, pending: PendingConnection) {
        let connection = captured.connection
        let domain = connection.family == .ipv4 ? Linux.AF_INET : Linux.AF_INET6
        let fd = try huskCall("creating the socket of fd \(descriptor.fd) (\(connection.name))", SyscallNumber.socket,
                              [UInt64(domain), UInt64(Linux.SOCK_STREAM | (Int32(descriptor.flags) & Linux.O_CLOEXEC)), UInt64(Linux.IPPROTO_TCP)])
        let copy: FileDescriptor
        do {
            let pidfd = try Kernel.pidfdOpen(pid)
            defer { try? pidfd.close() }
            copy = try Kernel.pidfdGetfd(pidfd, Int32(fd))
        } catch {
            throw StepFailure(step: "taking the socket of fd \(descriptor.fd)", detail: "\(error)")
        }
        do {
            try TcpRepair.restore(copy, connection)
        } catch {
            try? copy.close()
            throw StepFailure(step: "rebuilding the connection of fd \(descriptor.fd) (\(connection.name)): \(error.step)", detail: error.detail)
        }
        return (fd, PendingConnection(copy: copy, connection: connection))
    }

    /// Ends repair mode on every rebuilt connection (the kernel then sends a window probe, and
    /// the peer answers with its window), and gives back SO_REUSEADDR and O_NONBLOCK.
    func finishConnections(_ pending: [PendingConnection]) throws {
        for item in pending {
            do { try TcpRepair.finish(item.copy, item.connection) } catch {
                throw StepFailure(step: "finishing the connection \(item.connection.name): \(error.step)", detail: error.detail)
            }
        }
    }
}
