/// The sockets of one network namespace as the kernel's sock_diag reports them, and each kind of
/// socket as a plain value. Inodes match the `socket:[N]` links of `/proc/PID/fd`.
public struct SocketTable: Equatable, Sendable, Codable {
    public var inet: [InetSocket] = []
    public var unix: [UnixSocket] = []
    public var netlink: [NetlinkSocket] = []
    public var packet: [PacketSocket] = []
    /// Families the kernel could not dump (its diag module absent), e.g. `["packet"]`.
    public var unavailable: [String] = []

    public init() {}

    /// Every socket keyed by inode. Sockets with inode 0 (accepted by the kernel but not yet
    /// `accept()`ed, or in TIME-WAIT) belong to no descriptor and are left out.
    public func byInode() -> [UInt64: SocketInfo] {
        var table: [UInt64: SocketInfo] = [:]
        table.reserveCapacity(inet.count + unix.count + netlink.count + packet.count)
        for socket in inet where socket.inode != 0 { table[socket.inode] = .inet(socket) }
        for socket in unix where socket.inode != 0 { table[socket.inode] = .unix(socket) }
        for socket in netlink where socket.inode != 0 { table[socket.inode] = .netlink(socket) }
        for socket in packet where socket.inode != 0 { table[socket.inode] = .packet(socket) }
        return table
    }
}

/// One socket of any family.
public enum SocketInfo: Equatable, Sendable {
    case inet(InetSocket)
    case unix(UnixSocket)
    case netlink(NetlinkSocket)
    case packet(PacketSocket)

    public var inode: UInt64 {
        switch self {
        case .inet(let s): return s.inode
        case .unix(let s): return s.inode
        case .netlink(let s): return s.inode
        case .packet(let s): return s.inode
        }
    }
}

/// Which directions of a connection were shut down with `shutdown(2)`.
public enum SocketShutdown: String, Equatable, Sendable, Codable {
    case none, read, write, both

    /// From the kernel's mask (bit 0: receive, bit 1: send).
    public init(mask: Int32) {
        switch mask & 3 {
        case 1: self = .read
        case 2: self = .write
        case 3: self = .both
        default: self = .none
        }
    }
}

/// Socket states named as `ss` names them, with full words (`ESTABLISHED`, not `ESTAB`).
public enum SocketState {
    /// The name of kernel state `state` (`TCP_ESTABLISHED` = 1 … `TCP_NEW_SYN_RECV` = 12).
    /// A closed socket is `CLOSE` for a TCP socket and `UNCONN` for anything connectionless or unconnected.
    public static func name(_ state: UInt8, connectionOriented: Bool) -> String {
        switch state {
        case 1: return "ESTABLISHED"
        case 2: return "SYN-SENT"
        case 3, 12: return "SYN-RECV"
        case 4: return "FIN-WAIT-1"
        case 5: return "FIN-WAIT-2"
        case 6: return "TIME-WAIT"
        case 7: return connectionOriented ? "CLOSE" : "UNCONN"
        case 8: return "CLOSE-WAIT"
        case 9: return "LAST-ACK"
        case 10: return "LISTEN"
        case 11: return "CLOSING"
        default: return "UNKNOWN-\(state)"
        }
    }
}

/// An address and port as `ss` prints them: `127.0.0.1:8080`, `[::1]:8080`, `0.0.0.0:*`.
public struct SocketEndpoint: Hashable, Sendable, Codable, CustomStringConvertible {
    public var address: String
    public var port: UInt16

    public init(address: String, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String {
        let host = address.contains(":") ? "[\(address)]" : address
        return "\(host):\(port == 0 ? "*" : String(port))"
    }
}

/// The transport of an internet socket (the JSON spells it `tcp` or `udp`).
public enum InetProtocol: String, Sendable, Codable, CaseIterable {
    case tcp, udp
    /// TCP has connections (LISTEN, ESTABLISHED…); UDP sockets are only bound or connected.
    public var isConnectionOriented: Bool { self == .tcp }
}

/// The address family of an internet socket (the JSON spells it `ipv4` or `ipv6`).
public enum InetFamily: String, Sendable, Codable, CaseIterable {
    case ipv4, ipv6
}

/// A TCP or UDP socket over IPv4 or IPv6.
public struct InetSocket: Equatable, Sendable, Codable {
    public var `protocol`: InetProtocol
    public var family: InetFamily
    public var state: String
    public var local: SocketEndpoint
    public var remote: SocketEndpoint
    /// Bytes waiting to be read (for a listener: connections waiting in accept()).
    public var receiveQueue: UInt32
    /// Bytes not yet acknowledged or sent (for a listener: the backlog).
    public var sendQueue: UInt32
    public var uid: UInt32
    /// 0 for a connection not yet `accept()`ed or in TIME-WAIT: no descriptor holds it.
    public var inode: UInt64
    /// The kernel's socket cookie, unique while the socket lives.
    public var cookie: UInt64
    /// Bound interface index, 0 for none.
    public var interface: UInt32
    public var shutdown: SocketShutdown
    /// IPV6_V6ONLY, for IPv6 sockets.
    public var v6Only: Bool?

    public init(protocol: InetProtocol, family: InetFamily, state: String, local: SocketEndpoint, remote: SocketEndpoint,
                receiveQueue: UInt32, sendQueue: UInt32, uid: UInt32, inode: UInt64, cookie: UInt64,
                interface: UInt32, shutdown: SocketShutdown, v6Only: Bool?) {
        self.protocol = `protocol`
        self.family = family
        self.state = state
        self.local = local
        self.remote = remote
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
        self.uid = uid
        self.inode = inode
        self.cookie = cookie
        self.interface = interface
        self.shutdown = shutdown
        self.v6Only = v6Only
    }
}

/// An AF_UNIX socket.
public struct UnixSocket: Equatable, Sendable, Codable {
    /// `stream`, `dgram` or `seqpacket`.
    public var type: String
    public var state: String
    public var inode: UInt64
    public var cookie: UInt64
    /// The bound name: a path, or `@name` for an abstract name (as `ss` prints it); nil when unbound.
    public var name: String?
    /// Whether `name` is in the abstract namespace (no file on disk).
    public var abstract: Bool
    /// The inode of the connected peer; nil when unconnected, 0 when the peer is the server end
    /// of a connection its listener has not accept()ed yet.
    public var peerInode: UInt64?
    /// For a listener: the inodes of connections waiting in accept().
    public var pendingConnections: [UInt64]
    /// For a listener, the number of pending connections; otherwise bytes queued to read. Nil when unknown.
    public var receiveQueue: UInt32?
    /// For a listener, the backlog; otherwise bytes queued to send. Nil when unknown.
    public var sendQueue: UInt32?
    public var shutdown: SocketShutdown
    public var uid: UInt32?

    public init(type: String, state: String, inode: UInt64, cookie: UInt64, name: String?, abstract: Bool,
                peerInode: UInt64?, pendingConnections: [UInt64], receiveQueue: UInt32?, sendQueue: UInt32?,
                shutdown: SocketShutdown, uid: UInt32?) {
        self.type = type
        self.state = state
        self.inode = inode
        self.cookie = cookie
        self.name = name
        self.abstract = abstract
        self.peerInode = peerInode
        self.pendingConnections = pendingConnections
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
        self.shutdown = shutdown
        self.uid = uid
    }
}

/// An AF_NETLINK socket.
public struct NetlinkSocket: Equatable, Sendable, Codable {
    /// The netlink protocol by name (`route`, `sock_diag`, `audit`…), or its number.
    public var `protocol`: String
    public var portID: UInt32
    public var destinationPortID: UInt32
    public var destinationGroup: UInt32
    public var state: String
    public var inode: UInt64
    public var cookie: UInt64

    public init(protocol: String, portID: UInt32, destinationPortID: UInt32, destinationGroup: UInt32,
                state: String, inode: UInt64, cookie: UInt64) {
        self.protocol = `protocol`
        self.portID = portID
        self.destinationPortID = destinationPortID
        self.destinationGroup = destinationGroup
        self.state = state
        self.inode = inode
        self.cookie = cookie
    }
}

/// An AF_PACKET socket.
public struct PacketSocket: Equatable, Sendable, Codable {
    /// `raw` or `dgram`.
    public var type: String
    /// The Ethernet protocol number it receives (0x0003 = ETH_P_ALL).
    public var ethernetProtocol: UInt16
    /// Bound interface index, nil when unknown.
    public var interface: UInt32?
    public var uid: UInt32?
    public var inode: UInt64
    public var cookie: UInt64

    public init(type: String, ethernetProtocol: UInt16, interface: UInt32?, uid: UInt32?, inode: UInt64, cookie: UInt64) {
        self.type = type
        self.ethernetProtocol = ethernetProtocol
        self.interface = interface
        self.uid = uid
        self.inode = inode
        self.cookie = cookie
    }
}
