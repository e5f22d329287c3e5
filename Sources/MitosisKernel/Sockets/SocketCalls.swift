import Foundation
import Glibc
import MitosisModel
import SystemPackage

/// Socket queries and settings on a descriptor of this process (typically a `pidfd_getfd` copy
/// of another process's socket: the same socket).
extension Kernel {
    /// An integer socket option. The corresponding system call is `getsockopt`.
    package static func socketOption(_ fd: FileDescriptor, level: Int32, name: Int32) throws(Errno) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        try check { getsockopt(fd.rawValue, level, name, &value, &length) }
        return value
    }

    /// Sets an integer socket option. The corresponding system call is `setsockopt`.
    package static func setSocketOption(_ fd: FileDescriptor, level: Int32, name: Int32, value: Int32) throws(Errno) {
        var copy = value
        try check { setsockopt(fd.rawValue, level, name, &copy, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// The address the socket is bound to (`peer` false) or connected to; nil when it is not
    /// (an inet port 0, an unnamed unix socket, `ENOTCONN`).
    /// The corresponding system calls are `getsockname` and `getpeername`.
    package static func socketAddress(_ fd: FileDescriptor, peer: Bool) throws(Errno) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                peer ? getpeername(fd.rawValue, $0, &length) : getsockname(fd.rawValue, $0, &length)
            }
        }
        if result != 0 {
            if errno == ENOTCONN { return nil }
            throw Errno(rawValue: errno)
        }
        return withUnsafeBytes(of: &storage) { decodeAddress(UnsafeRawBufferPointer(rebasing: $0[..<Int(length)])) }
    }

    /// The peer of an inet socket that was connected, even once its connection has ended
    /// (`getpeername` answers `ENOTCONN` in CLOSE; `SO_PEERNAME` asks the same without that
    /// check); nil for a socket that never had one. `domain` is `AF_INET` or `AF_INET6`. The corresponding call is
    /// `getsockopt(SO_PEERNAME)`.
    package static func formerPeer(_ fd: FileDescriptor, domain: Int32) throws(Errno) -> SocketAddress? {
        var storage = sockaddr_storage()
        // The kernel refuses (EINVAL) a buffer longer than the family's address.
        var length = socklen_t(domain == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size)
        if getsockopt(fd.rawValue, SOL_SOCKET, SO_PEERNAME, &storage, &length) != 0 {
            if errno == ENOTCONN { return nil }
            throw Errno(rawValue: errno)
        }
        return withUnsafeBytes(of: &storage) { decodeAddress(UnsafeRawBufferPointer(rebasing: $0[..<Int(length)])) }
    }

    /// A `sockaddr_in`, `sockaddr_in6` or `sockaddr_un` decoded; nil for an unbound address.
    package static func decodeAddress(_ bytes: UnsafeRawBufferPointer) -> SocketAddress? {
        guard bytes.count >= 2 else { return nil }
        let family = Int32(bytes.loadUnaligned(as: sa_family_t.self))
        switch family {
        case AF_INET where bytes.count >= MemoryLayout<sockaddr_in>.size:
            let address = bytes.loadUnaligned(as: sockaddr_in.self)
            let port = UInt16(bigEndian: address.sin_port)
            guard port != 0 else { return nil }
            return SocketAddress(address: SockDiag.formatAddress(UnsafeRawBufferPointer(rebasing: bytes[4..<8]), v6: false), port: port)
        case AF_INET6 where bytes.count >= MemoryLayout<sockaddr_in6>.size:
            let address = bytes.loadUnaligned(as: sockaddr_in6.self)
            let port = UInt16(bigEndian: address.sin6_port)
            guard port != 0 else { return nil }
            return SocketAddress(address: SockDiag.formatAddress(UnsafeRawBufferPointer(rebasing: bytes[8..<24]), v6: true),
                                 port: port, scope: address.sin6_scope_id)
        case AF_UNIX:
            var path = Data(bytes[2...])
            guard !path.isEmpty else { return nil }
            if path.first != 0, let end = path.firstIndex(of: 0) { path = path[..<end] }  // a pathname ends at its NUL
            return SocketAddress(path: path)
        default:
            return nil
        }
    }

    /// `address` as the `sockaddr` of `domain` for `bind`/`connect`; nil when it does not fit
    /// (another family, an address that does not parse, a path longer than `sun_path`).
    package static func encodeAddress(_ address: SocketAddress, domain: Int32) -> [UInt8]? {
        switch domain {
        case AF_INET:
            var raw = sockaddr_in()
            raw.sin_family = sa_family_t(AF_INET)
            guard let text = address.address, let port = address.port, inet_pton(AF_INET, text, &raw.sin_addr) == 1 else { return nil }
            raw.sin_port = port.bigEndian
            return withUnsafeBytes(of: raw) { Array($0) }
        case AF_INET6:
            var raw = sockaddr_in6()
            raw.sin6_family = sa_family_t(AF_INET6)
            guard let text = address.address, let port = address.port, inet_pton(AF_INET6, text, &raw.sin6_addr) == 1 else { return nil }
            raw.sin6_port = port.bigEndian
            raw.sin6_scope_id = address.scope ?? 0
            return withUnsafeBytes(of: raw) { Array($0) }
        case AF_UNIX:
            guard let path = address.path, !path.isEmpty, path.count < 108 else { return nil }
            // 2 bytes of family, then the path; a pathname gets its NUL, an abstract name does not.
            return withUnsafeBytes(of: sa_family_t(AF_UNIX)) { Array($0) } + Array(path) + (path.first == 0 ? [] : [0])
        default:
            return nil
        }
    }

    /// A TCP socket's state (`TCP_ESTABLISHED` 1 … `TCP_LISTEN` 10) and, for a listener, the
    /// backlog it was given. The corresponding system call is `getsockopt(TCP_INFO)`.
    package static func tcpState(_ fd: FileDescriptor) throws(Errno) -> (state: UInt8, backlog: UInt32) {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        try check { getsockopt(fd.rawValue, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) }
        // For a listener the kernel reports the accept queue's limit in tcpi_sacked.
        return (info.tcpi_state, info.tcpi_sacked)
    }
}

/// One integer socket option a restore reads and sets again.
package struct RestorableSocketOption: Sendable {
    package let level: Int32
    package let name: Int32
    package let label: String
    /// Which sockets have it: `nil` all; else the domain (`AF_INET6` for `IPV6_V6ONLY`) or
    /// the protocol (`IPPROTO_TCP` for `TCP_*`) it needs.
    package let domain: Int32?
    package let tcpOnly: Bool

    /// The options that change how a restored socket behaves (not the ones the kernel derives).
    /// Buffer sizes read back doubled (the kernel's bookkeeping); they are set again halved
    /// with the `…FORCE` variants, which ignore the system-wide maxima.
    package static let all: [RestorableSocketOption] = [
        .init(level: SOL_SOCKET, name: SO_REUSEADDR, label: "SO_REUSEADDR", domain: nil, tcpOnly: false),
        .init(level: SOL_SOCKET, name: SO_REUSEPORT, label: "SO_REUSEPORT", domain: nil, tcpOnly: false),
        .init(level: SOL_SOCKET, name: SO_KEEPALIVE, label: "SO_KEEPALIVE", domain: nil, tcpOnly: false),
        .init(level: SOL_SOCKET, name: SO_BROADCAST, label: "SO_BROADCAST", domain: nil, tcpOnly: false),
        .init(level: SOL_SOCKET, name: SO_PASSCRED, label: "SO_PASSCRED", domain: nil, tcpOnly: false),
        .init(level: SOL_SOCKET, name: SO_SNDBUF, label: "SO_SNDBUF", domain: nil, tcpOnly: false),
        .init(level: SOL_SOCKET, name: SO_RCVBUF, label: "SO_RCVBUF", domain: nil, tcpOnly: false),
        .init(level: Int32(IPPROTO_IPV6), name: Int32(IPV6_V6ONLY), label: "IPV6_V6ONLY", domain: AF_INET6, tcpOnly: false),
        .init(level: Int32(IPPROTO_TCP), name: Int32(TCP_NODELAY), label: "TCP_NODELAY", domain: nil, tcpOnly: true),
        .init(level: Int32(IPPROTO_TCP), name: Int32(TCP_KEEPIDLE), label: "TCP_KEEPIDLE", domain: nil, tcpOnly: true),
        .init(level: Int32(IPPROTO_TCP), name: Int32(TCP_KEEPINTVL), label: "TCP_KEEPINTVL", domain: nil, tcpOnly: true),
        .init(level: Int32(IPPROTO_TCP), name: Int32(TCP_KEEPCNT), label: "TCP_KEEPCNT", domain: nil, tcpOnly: true),
        .init(level: Int32(IPPROTO_TCP), name: Int32(TCP_DEFER_ACCEPT), label: "TCP_DEFER_ACCEPT", domain: nil, tcpOnly: true),
        .init(level: Int32(IPPROTO_TCP), name: 23 /* TCP_FASTOPEN */, label: "TCP_FASTOPEN", domain: nil, tcpOnly: true),
        // Packet sockets (SOL_PACKET 263): the ring's frame layout, and what each frame reports.
        .init(level: 263, name: 10, label: "PACKET_VERSION", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 8, label: "PACKET_AUXDATA", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 9, label: "PACKET_ORIGDEV", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 12, label: "PACKET_RESERVE", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 14, label: "PACKET_LOSS", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 17, label: "PACKET_TIMESTAMP", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 20, label: "PACKET_QDISC_BYPASS", domain: AF_PACKET, tcpOnly: false),
        .init(level: 263, name: 23, label: "PACKET_IGNORE_OUTGOING", domain: AF_PACKET, tcpOnly: false),
    ]

    package func applies(domain socketDomain: Int32, tcp: Bool) -> Bool {
        (domain == nil || domain == socketDomain) && (!tcpOnly || tcp)
    }

    /// The option a record names, if restore knows it.
    package static func named(level: Int32, name: Int32) -> RestorableSocketOption? {
        all.first { $0.level == level && $0.name == name }
    }

    /// Buffer sizes: the value to pass to set `read` back, and the option that sets it beyond the maxima.
    package func setting(_ read: Int32) -> (name: Int32, value: Int32) {
        switch (level, name) {
        case (SOL_SOCKET, SO_SNDBUF): (32 /* SO_SNDBUFFORCE */, read / 2)
        case (SOL_SOCKET, SO_RCVBUF): (33 /* SO_RCVBUFFORCE */, read / 2)
        default: (name, read)
        }
    }
}

extension Kernel {
    /// `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL` and `SO_ACCEPTCONN` of a socket.
    package static func socketKind(_ fd: FileDescriptor) throws(Errno) -> (domain: Int32, type: Int32, protocol: Int32, listening: Bool) {
        (try socketOption(fd, level: SOL_SOCKET, name: SO_DOMAIN), try socketOption(fd, level: SOL_SOCKET, name: SO_TYPE),
         try socketOption(fd, level: SOL_SOCKET, name: SO_PROTOCOL), try socketOption(fd, level: SOL_SOCKET, name: SO_ACCEPTCONN) != 0)
    }
}

extension Kernel {
    /// Whether a process accepts connections on the unix socket file at `path` (a `connect` of
    /// a new socket of `type` succeeds); false when the file is a stale leftover (`ECONNREFUSED`).
    /// The corresponding system call is `connect`.
    package static func unixSocketAnswers(_ path: String, type: Int32) throws(Errno) -> Bool {
        let fd = try check { socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { Glibc.close(fd) }
        guard let bytes = encodeAddress(SocketAddress(path: Data(path.utf8)), domain: AF_UNIX) else { throw .fileNameTooLong }
        let result = bytes.withUnsafeBytes { connect(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t($0.count)) }
        if result == 0 { return true }
        if errno == ECONNREFUSED { return false }
        throw Errno(rawValue: errno)
    }
}
