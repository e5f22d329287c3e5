import CMitosis
import Foundation
import Glibc
import MitosisModel
import SystemPackage

/// TCP repair mode: reading an established connection's state out of a socket and writing it
/// into another, with no packet sent either way. All of it needs `CAP_NET_ADMIN` in the socket's
/// network namespace. It works on any descriptor of the socket — a `pidfd_getfd` copy of a
/// target's socket is the same open file, so Mitosis repairs a target's connection from outside,
/// without injecting anything.
///
/// While a socket is in repair mode the kernel sends nothing for it: writes go to the send queue
/// without transmission, and closing it (or killing its process) drops it silently — no FIN, no
/// RST. That is how a checkpointed connection is taken away from the original.
package enum TcpRepair {
    /// Which queue `TCP_QUEUE_SEQ`, `recv` and `send` act on while in repair mode.
    package enum Queue: Int32, Sendable {
        case none = 0, receive = 1, send = 2
    }

    /// `TCP_REPAIR` values. `.offWithoutProbe` leaves repair mode without the window probe plain
    /// `.off` sends (Linux 4.13+), for a socket that is only being read.
    package enum Mode: Int32, Sendable {
        case on = 1, off = 0, offWithoutProbe = -1
    }

    /// Enters or leaves repair mode (any state but LISTEN).
    /// The corresponding call is `setsockopt(SOL_TCP, TCP_REPAIR)`.
    package static func setRepair(_ fd: FileDescriptor, _ mode: Mode) throws(Errno) {
        try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_REPAIR, value: mode.rawValue)
    }

    /// Chooses the queue later calls act on. The corresponding call is `setsockopt(TCP_REPAIR_QUEUE)`.
    package static func selectQueue(_ fd: FileDescriptor, _ queue: Queue) throws(Errno) {
        try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_REPAIR_QUEUE, value: queue.rawValue)
    }

    /// The selected queue's sequence number: the send queue's `write_seq` or the receive queue's
    /// `rcv_nxt`. The corresponding call is `getsockopt(TCP_QUEUE_SEQ)`.
    package static func queueSequence(_ fd: FileDescriptor) throws(Errno) -> UInt32 {
        UInt32(bitPattern: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_QUEUE_SEQ))
    }

    /// Sets the selected queue's initial sequence number (only on a socket not yet connected).
    /// The corresponding call is `setsockopt(TCP_QUEUE_SEQ)`.
    package static func setQueueSequence(_ fd: FileDescriptor, _ sequence: UInt32) throws(Errno) {
        try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_QUEUE_SEQ, value: Int32(bitPattern: sequence))
    }

    /// The queues' lengths: unread bytes (`SIOCINQ`), unacknowledged plus unsent bytes
    /// (`SIOCOUTQ`), and of those the unsent ones (`SIOCOUTQNSD`).
    package static func queueLengths(_ fd: FileDescriptor) throws(Errno) -> (receive: Int, send: Int, unsent: Int) {
        func ask(_ request: UInt) throws(Errno) -> Int {
            var value: Int32 = 0
            try Kernel.check { mitosis_ioctl_int(fd.rawValue, request, &value) }
            return Int(value)
        }
        return (try ask(MITOSIS_SIOCINQ), try ask(MITOSIS_SIOCOUTQ), try ask(MITOSIS_SIOCOUTQNSD))
    }

    /// Copies exactly `count` bytes of the selected queue without consuming them, or throws
    /// `EIO` when the queue holds another amount (one byte more is asked for, to know).
    /// The corresponding call is `recv(MSG_PEEK | MSG_DONTWAIT)` in repair mode.
    package static func peekQueue(_ fd: FileDescriptor, count: Int) throws(Errno) -> [UInt8] {
        if count == 0 { return [] }
        var bytes = [UInt8](repeating: 0, count: count + 1)
        let got = try Kernel.check { bytes.withUnsafeMutableBytes { recv(fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_PEEK | MSG_DONTWAIT)) } }
        guard got == count else { throw .ioError }
        bytes.removeLast()
        return bytes
    }

    /// Appends `bytes` to the selected queue (in repair mode: as received, or as sent and
    /// unacknowledged; out of it: as the application writes). The kernel allocates one linear
    /// buffer per call in repair mode, so a refused chunk is retried in halves down to 1 KiB.
    /// The corresponding call is `send`.
    package static func fillQueue(_ fd: FileDescriptor, _ bytes: [UInt8]) throws(Errno) {
        var offset = 0
        var chunk = max(bytes.count, 1)
        while offset < bytes.count {
            let wanted = min(chunk, bytes.count - offset)
            let sent = bytes.withUnsafeBytes { send(fd.rawValue, $0.baseAddress! + offset, wanted, Int32(MSG_DONTWAIT)) }
            if sent > 0 { offset += sent; continue }
            let error = Errno(rawValue: errno)
            if sent < 0 && error == .interrupted { continue }
            guard chunk > 1024 else { throw sent == 0 ? .ioError : error }
            chunk /= 2
        }
    }

    /// The connection's state (`TCP_ESTABLISHED` = 1…), negotiated options (`TCPI_OPT_*`) and
    /// window scales. The corresponding call is `getsockopt(TCP_INFO)`.
    package static func info(_ fd: FileDescriptor) throws(Errno) -> (state: UInt8, options: UInt8, sendWindowScale: UInt8, receiveWindowScale: UInt8) {
        var head = mitosis_tcp_info_head()
        var length = socklen_t(MemoryLayout<mitosis_tcp_info_head>.size)
        try Kernel.check { getsockopt(fd.rawValue, Int32(MITOSIS_SOL_TCP), MITOSIS_TCP_INFO, &head, &length) }
        return (head.state, head.options, head.wscales & 0xf, head.wscales >> 4)
    }

    /// The TCP states whose connection is captured: ESTABLISHED (1) and CLOSE-WAIT (8), where
    /// the peer has closed and the application has not yet. A server sees CLOSE-WAIT whenever
    /// a client hangs up while the server is frozen, which a checkpoint's freeze itself causes
    /// (a client that times out on the frozen server closes its connection).
    package static let capturedStates: Set<UInt8> = [1, 8]

    /// Whether `fd` is an IPv4 or IPv6 TCP socket in a state whose connection is captured
    /// (`capturedStates`). The corresponding calls are `getsockopt(SO_DOMAIN, SO_PROTOCOL, TCP_INFO)`.
    package static func isCapturable(_ fd: FileDescriptor) -> Bool {
        guard let domain = try? Kernel.socketOption(fd, level: SOL_SOCKET, name: SO_DOMAIN), domain == AF_INET || domain == AF_INET6,
              let proto = try? Kernel.socketOption(fd, level: SOL_SOCKET, name: SO_PROTOCOL), proto == Int32(IPPROTO_TCP),
              let state = try? info(fd).state else { return false }
        return capturedStates.contains(state)
    }

    /// Whether the socket's receiving side is shut: the peer's FIN arrived, or the application
    /// called `shutdown(SHUT_RD)` (then reads give end of file once the queue is read).
    /// The corresponding call is `poll(POLLRDHUP)` with no wait.
    package static func receiveShut(_ fd: FileDescriptor) throws(Errno) -> Bool {
        let rdhup: Int16 = 0x2000  // POLLRDHUP (a _GNU_SOURCE name Swift's Glibc leaves out)
        var entry = pollfd(fd: fd.rawValue, events: rdhup, revents: 0)
        _ = try Kernel.check { poll(&entry, 1, 0) }
        return entry.revents & rdhup != 0
    }

    /// Shuts the receiving side (`shutdown(SHUT_RD)`): no packet is sent, reads give end of file
    /// once the queue is read, as after the peer's FIN. The corresponding call is `shutdown`.
    package static func shutReceive(_ fd: FileDescriptor) throws(Errno) {
        _ = try Kernel.check { shutdown(fd.rawValue, Int32(SHUT_RD)) }
    }

    /// The window state. The corresponding call is `getsockopt(TCP_REPAIR_WINDOW)`.
    package static func window(_ fd: FileDescriptor) throws(Errno) -> TcpConnection.Window {
        var w = mitosis_tcp_repair_window()
        var length = socklen_t(MemoryLayout<mitosis_tcp_repair_window>.size)
        try Kernel.check { getsockopt(fd.rawValue, Int32(MITOSIS_SOL_TCP), MITOSIS_TCP_REPAIR_WINDOW, &w, &length) }
        return TcpConnection.Window(sendWl1: w.snd_wl1, sendWindow: w.snd_wnd, maxWindow: w.max_window,
                                    receiveWindow: w.rcv_wnd, receiveWup: w.rcv_wup)
    }

    /// Sets the window state (the kernel checks it against the sequence numbers).
    /// The corresponding call is `setsockopt(TCP_REPAIR_WINDOW)`.
    package static func setWindow(_ fd: FileDescriptor, _ window: TcpConnection.Window) throws(Errno) {
        var w = mitosis_tcp_repair_window(snd_wl1: window.sendWl1, snd_wnd: window.sendWindow, max_window: window.maxWindow,
                                          rcv_wnd: window.receiveWindow, rcv_wup: window.receiveWup)
        try Kernel.check { setsockopt(fd.rawValue, Int32(MITOSIS_SOL_TCP), MITOSIS_TCP_REPAIR_WINDOW, &w, socklen_t(MemoryLayout<mitosis_tcp_repair_window>.size)) }
    }

    /// Puts back the options negotiated at the handshake: MSS clamp, window scales, SACK,
    /// timestamps. The corresponding call is `setsockopt(TCP_REPAIR_OPTIONS)`.
    package static func setOptions(_ fd: FileDescriptor, _ options: TcpConnection.Options) throws(Errno) {
        var list: [mitosis_tcp_repair_opt] = []
        if options.selectiveAcknowledgments { list.append(.init(opt_code: MITOSIS_TCPOPT_SACK_PERM, opt_val: 0)) }
        if let send = options.sendWindowScale, let receive = options.receiveWindowScale {
            list.append(.init(opt_code: MITOSIS_TCPOPT_WINDOW, opt_val: UInt32(send) | UInt32(receive) << 16))
        }
        if options.timestamps { list.append(.init(opt_code: MITOSIS_TCPOPT_TIMESTAMP, opt_val: 0)) }
        list.append(.init(opt_code: MITOSIS_TCPOPT_MAXSEG, opt_val: options.maxSegmentSize))
        try Kernel.check {
            list.withUnsafeBytes { setsockopt(fd.rawValue, Int32(MITOSIS_SOL_TCP), MITOSIS_TCP_REPAIR_OPTIONS, $0.baseAddress, socklen_t($0.count)) }
        }
    }

    /// The timestamp clock. The corresponding call is `getsockopt(TCP_TIMESTAMP)`.
    package static func timestamp(_ fd: FileDescriptor) throws(Errno) -> UInt32 {
        UInt32(bitPattern: try Kernel.socketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_TIMESTAMP))
    }

    /// Sets the timestamp clock's offset so it continues from `value`.
    /// The corresponding call is `setsockopt(TCP_TIMESTAMP)`.
    package static func setTimestamp(_ fd: FileDescriptor, _ value: UInt32) throws(Errno) {
        try Kernel.setSocketOption(fd, level: MITOSIS_SOL_TCP, name: MITOSIS_TCP_TIMESTAMP, value: Int32(bitPattern: value))
    }

    /// The connection's own address (`getsockname`) or its peer's (`getpeername`), with the family
    /// the repair calls need (an IPv6 socket's text always contains a colon).
    package static func endpoint(_ fd: FileDescriptor, peer: Bool) throws(Errno) -> (family: InetFamily, endpoint: SocketEndpoint) {
        guard let address = try Kernel.socketAddress(fd, peer: peer) else { throw .socketNotConnected }
        guard let text = address.address, let port = address.port else { throw .addressFamilyNotSupported }
        return (text.contains(":") ? .ipv6 : .ipv4, SocketEndpoint(address: text, port: port))
    }

    /// Binds (`connect: false`) or connects the socket to `endpoint`. In repair mode `connect`
    /// sends no SYN: the socket becomes ESTABLISHED at once with the sequence numbers set.
    /// The corresponding system calls are `bind` and `connect`.
    package static func attach(_ fd: FileDescriptor, family: InetFamily, to endpoint: SocketEndpoint, connect: Bool) throws(Errno) {
        guard let bytes = InetAddress.bytes(endpoint.address, family: family) else { throw .invalidArgument }
        func call(_ address: UnsafePointer<sockaddr>, _ length: Int) -> Int32 {
            connect ? Glibc.connect(fd.rawValue, address, socklen_t(length)) : bind(fd.rawValue, address, socklen_t(length))
        }
        switch family {
        case .ipv4:
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = endpoint.port.bigEndian
            withUnsafeMutableBytes(of: &address.sin_addr) { $0.copyBytes(from: bytes) }
            try Kernel.check { withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, MemoryLayout<sockaddr_in>.size) } } }
        case .ipv6:
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = endpoint.port.bigEndian
            withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: bytes) }
            try Kernel.check { withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, MemoryLayout<sockaddr_in6>.size) } } }
        }
    }

    /// The open file's status flags (`O_NONBLOCK`…). The corresponding system call is `fcntl(F_GETFL)`.
    package static func statusFlags(_ fd: FileDescriptor) throws(Errno) -> Int32 {
        try Kernel.check { mitosis_fcntl_getfl(fd.rawValue) }
    }

    /// Sets the open file's status flags. The corresponding system call is `fcntl(F_SETFL)`.
    package static func setStatusFlags(_ fd: FileDescriptor, _ flags: Int32) throws(Errno) {
        try Kernel.check { mitosis_fcntl_setfl(fd.rawValue, flags) }
    }
}
