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
