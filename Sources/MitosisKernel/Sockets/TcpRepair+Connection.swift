import CMitosis
import Foundation
import Glibc
import MitosisModel
import SystemPackage

/// Reading a whole connection out of a socket and writing it into another, in the order the
/// kernel requires (the order of CRIU's soccr, `soccr/soccr.c`).
extension TcpRepair {
    /// Why a connection could not be captured or restored: the step and what went wrong, one line.
    package struct Failure: Error, CustomStringConvertible, Equatable {
        package var step: String
        package var detail: String
        package var description: String { "\(step): \(detail)" }

        package init(step: String, detail: String) {
            self.step = step
            self.detail = detail
        }
    }

    /// Runs one kernel step, naming it in the error.
    private static func step<T>(_ name: String, _ body: () throws(Errno) -> T) throws(Failure) -> T {
        do { return try body() } catch { throw Failure(step: name, detail: "\(error)") }
    }

    /// Captures the connection of socket `fd`, ESTABLISHED or CLOSE-WAIT (a `pidfd_getfd` copy
    /// is enough). In CLOSE-WAIT the receive sequence counts the peer's FIN and the queue length
    /// (`SIOCINQ`) does not: the restore puts the bytes just below it, so the rebuilt socket
    /// acknowledges the FIN as the original did (`peerClosed`).
    /// Its owner must be frozen, or it could read or write between the steps.
    ///
    /// The socket is left in repair mode when `stayInRepair` (the connection is being taken
    /// away: closing it then sends nothing), else repair mode is left without a window probe and
    /// the connection carries on as if nothing happened. On failure the socket leaves repair mode.
    package static func capture(_ fd: FileDescriptor, stayInRepair: Bool) throws(Failure) -> TcpConnection {
        // Before repair mode, which overrides SO_REUSEADDR while on.
        let socketOptions = try step("reading socket options") { () throws(Errno) in
            TcpConnection.SocketOptions(
                noDelay: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_NODELAY) != 0,
                cork: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_CORK) != 0,
                keepAlive: try Kernel.socketOption(fd, level: SOL_SOCKET, name: SO_KEEPALIVE) != 0,
                keepIdle: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_KEEPIDLE),
                keepInterval: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_KEEPINTVL),
                keepCount: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_KEEPCNT),
                reuseAddress: try Kernel.socketOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR) != 0,
                sendBuffer: try Kernel.socketOption(fd, level: SOL_SOCKET, name: SO_SNDBUF),
                receiveBuffer: try Kernel.socketOption(fd, level: SOL_SOCKET, name: SO_RCVBUF))
        }
        let flags = try step("reading the file's flags") { () throws(Errno) in try statusFlags(fd) }
        let (family, local) = try step("reading the local address") { () throws(Errno) in try endpoint(fd, peer: false) }
        let (_, remote) = try step("reading the peer's address") { () throws(Errno) in try endpoint(fd, peer: true) }
        let peerClosed = try step("reading the receiving side's shutdown") { () throws(Errno) in try receiveShut(fd) }
        try step("entering repair mode") { () throws(Errno) in try setRepair(fd, .on) }
        do {
            var connection = try readRepaired(fd, family: family, local: local, remote: remote,
                                              socketOptions: socketOptions, nonBlocking: flags & O_NONBLOCK != 0)
            connection.peerClosed = peerClosed ? true : nil
            if !stayInRepair { try step("leaving repair mode") { () throws(Errno) in try leaveRepair(fd, reuseAddress: socketOptions.reuseAddress) } }
            return connection
        } catch {
            try? leaveRepair(fd, reuseAddress: socketOptions.reuseAddress)
            throw error
        }
    }

    /// Leaves repair mode without a window probe, as if it had never been entered: the kernel
    /// resets SO_REUSEADDR when repair mode ends, so the application's setting is put back.
    package static func leaveRepair(_ fd: FileDescriptor, reuseAddress: Bool) throws(Errno) {
        try setRepair(fd, .offWithoutProbe)
        try Kernel.setSocketOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: reuseAddress ? 1 : 0)
    }

    private static func readRepaired(_ fd: FileDescriptor, family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint,
                                     socketOptions: TcpConnection.SocketOptions, nonBlocking: Bool) throws(Failure) -> TcpConnection {
        let info = try step("reading TCP_INFO") { () throws(Errno) in try TcpRepair.info(fd) }
        guard capturedStates.contains(info.state) else {
            throw Failure(step: "capturing \(local) → \(remote)",
                          detail: "the connection is \(SocketState.name(info.state, connectionOriented: true)), only ESTABLISHED and CLOSE-WAIT connections are captured")
        }
        let lengths = try step("reading the queues' lengths") { () throws(Errno) in try queueLengths(fd) }
        let mss = try step("reading the MSS clamp") { () throws(Errno) in UInt32(bitPattern: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_MAXSEG)) }
        let scaled = info.options & MITOSIS_TCPI_OPT_WSCALE != 0
        let timestamps = info.options & MITOSIS_TCPI_OPT_TIMESTAMPS != 0
        let options = TcpConnection.Options(maxSegmentSize: mss, sendWindowScale: scaled ? info.sendWindowScale : nil,
                                            receiveWindowScale: scaled ? info.receiveWindowScale : nil,
                                            selectiveAcknowledgments: info.options & MITOSIS_TCPI_OPT_SACK != 0, timestamps: timestamps)
        let timestamp = timestamps ? try step("reading the timestamp") { () throws(Errno) in try TcpRepair.timestamp(fd) } : nil
        let window: TcpConnection.Window?
        do { window = try TcpRepair.window(fd) } catch .protocolNotAvailable { window = nil } catch {
            throw Failure(step: "reading the window", detail: "\(error)")
        }
        let (receiveSequence, received) = try step("reading the receive queue (\(lengths.receive) bytes)") { () throws(Errno) in
            try selectQueue(fd, .receive)
            return (try queueSequence(fd), try peekQueue(fd, count: lengths.receive))
        }
        let (sendSequence, sending) = try step("reading the send queue (\(lengths.send) bytes)") { () throws(Errno) in
            try selectQueue(fd, .send)
            return (try queueSequence(fd), try peekQueue(fd, count: lengths.send))
        }
        try step("selecting no queue") { () throws(Errno) in try selectQueue(fd, .none) }
        return TcpConnection(family: family, local: local, remote: remote, sendSequence: sendSequence, receiveSequence: receiveSequence,
                             sendQueue: Data(sending), unsentCount: UInt32(lengths.unsent), receiveQueue: Data(received),
                             options: options, timestamp: timestamp, window: window, socketOptions: socketOptions, nonBlocking: nonBlocking)
    }

    /// Rebuilds `connection` in `fd`, a new TCP socket of the connection's family in the network
    /// namespace that holds its local address: sequence numbers, addresses (`connect` in repair
    /// mode sends no SYN), negotiated options, timestamp, both queues, window, socket options.
    /// The socket stays in repair mode, silent, until `finish` — the last step of a restore, once
    /// everything else is in place.
    package static func restore(_ fd: FileDescriptor, _ connection: TcpConnection) throws(Failure) {
        let problems = connection.problems()
        guard problems.isEmpty else { throw Failure(step: "checking \(connection.name)", detail: problems.joined(separator: "; ")) }
        let received = [UInt8](connection.receiveQueue)
        let queued = [UInt8](connection.sendQueue)
        let sentCount = queued.count - Int(connection.unsentCount)
        // A new socket starts with small buffers: make room for the queues first (the `FORCE`
        // variants pass the system maxima; the kernel doubles what it is given).
        try step("sizing the buffers") { () throws(Errno) in
            let o = connection.socketOptions
            try Kernel.setSocketOption(fd, level: SOL_SOCKET, name: SO_SNDBUFFORCE, value: max(o.sendBuffer / 2, Int32(queued.count)))
            try Kernel.setSocketOption(fd, level: SOL_SOCKET, name: SO_RCVBUFFORCE, value: max(o.receiveBuffer / 2, Int32(received.count)))
        }
        try step("entering repair mode") { () throws(Errno) in try setRepair(fd, .on) }
        try step("setting the sequence numbers") { () throws(Errno) in
            try selectQueue(fd, .receive)
            try setQueueSequence(fd, connection.receiveSequence &- UInt32(received.count))
            try selectQueue(fd, .send)
            try setQueueSequence(fd, connection.sendSequence &- UInt32(queued.count))
        }
        try step("binding \(connection.local)") { () throws(Errno) in try attach(fd, family: connection.family, to: connection.local, connect: false) }
        try step("connecting to \(connection.remote) in repair mode") { () throws(Errno) in
            try attach(fd, family: connection.family, to: connection.remote, connect: true)
        }
        try step("setting the negotiated options") { () throws(Errno) in try setOptions(fd, connection.options) }
        if let timestamp = connection.timestamp {
            try step("setting the timestamp") { () throws(Errno) in try setTimestamp(fd, timestamp) }
        }
        try step("refilling the receive queue (\(received.count) bytes)") { () throws(Errno) in
            try selectQueue(fd, .receive)
            try fillQueue(fd, received)
        }
        try step("refilling the sent, unacknowledged bytes (\(sentCount))") { () throws(Errno) in
            try selectQueue(fd, .send)
            try fillQueue(fd, Array(queued[..<sentCount]))
        }
        // After the receive queue: the kernel checks the window against rcv_nxt, which it moved.
        if let window = connection.window {
            try step("setting the window") { () throws(Errno) in try setWindow(fd, window) }
        }
        // Never sent: written as the application writes, out of repair mode.
        if sentCount < queued.count {
            try step("writing the \(queued.count - sentCount) unsent bytes") { () throws(Errno) in
                try selectQueue(fd, .none)
                try setRepair(fd, .offWithoutProbe)
                try fillQueue(fd, Array(queued[sentCount...]))
                try setRepair(fd, .on)
            }
        }
        try step("setting socket options") { () throws(Errno) in
            let o = connection.socketOptions
            try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_NODELAY, value: o.noDelay ? 1 : 0)
            try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_CORK, value: o.cork ? 1 : 0)
            try Kernel.setSocketOption(fd, level: SOL_SOCKET, name: SO_KEEPALIVE, value: o.keepAlive ? 1 : 0)
            // 0 is the kernel's way of saying "the system default" only when read; never set it.
            if o.keepIdle > 0 { try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_KEEPIDLE, value: o.keepIdle) }
            if o.keepInterval > 0 { try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_KEEPINTVL, value: o.keepInterval) }
            if o.keepCount > 0 { try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_KEEPCNT, value: o.keepCount) }
            try selectQueue(fd, .none)
        }
    }

    /// Ends a restore: leaves repair mode (the kernel sends a window probe, which makes the peer
    /// answer with its window at once), then gives back what repair mode overrode — SO_REUSEADDR —
    /// and the file's O_NONBLOCK.
    package static func finish(_ fd: FileDescriptor, _ connection: TcpConnection) throws(Failure) {
        try step("leaving repair mode") { () throws(Errno) in try setRepair(fd, .off) }
        if connection.peerClosed == true {
            try step("shutting the receiving side (the peer had closed)") { () throws(Errno) in try shutReceive(fd) }
        }
        try step("setting SO_REUSEADDR and O_NONBLOCK") { () throws(Errno) in
            try Kernel.setSocketOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: connection.socketOptions.reuseAddress ? 1 : 0)
            let flags = try statusFlags(fd)
            try setStatusFlags(fd, connection.nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK)
        }
    }
}
