import Foundation

/// What a restore needs of one socket the process holds, read at the freeze through a copy of
/// the descriptor (`pidfd_getfd`; the same socket): its domain and type, the addresses it is
/// bound and connected to, whether it listens and with which backlog, the options that change
/// its behaviour, and for unix sockets the peer and the bytes waiting to be read.
public struct SocketRestoreState: Codable, Sendable, Equatable {
    /// The socket's inode, as in `socket:[N]`.
    public var inode: UInt64
    /// `AF_UNIX` (1), `AF_INET` (2), `AF_INET6` (10).
    public var domain: Int32
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5).
    public var type: Int32
    public var `protocol`: Int32
    /// `getsockname`: nil when the socket is not bound (an inet port 0, an unnamed unix socket).
    public var local: SocketAddress?
    /// `getpeername`: nil when not connected.
    public var peer: SocketAddress?
    /// `SO_ACCEPTCONN`.
    public var listening: Bool
    /// The backlog `listen` was given (`TCP_INFO.tcpi_sacked` of a listener; sock_diag's
    /// `udiag_wqueue`-like count for unix), nil when not listening.
    public var backlog: UInt32?
    /// TCP only: `TCP_INFO.tcpi_state` (1 ESTABLISHED, 7 CLOSE, 10 LISTEN…).
    public var tcpState: UInt8?
    /// TCP in CLOSE only: the peer its connection had (`SO_PEERNAME`) when the connection has
    /// ended (reset by the peer, or refused) and the application has not closed it yet. The
    /// kernel gave its port back when it closed, so it is restored as a new socket, not bound:
    /// binding it to `local` would collide with the listener that accepted it (EADDRINUSE).
    /// nil for a socket that was never connected, and in older images.
    public var endedPeer: SocketAddress?
    /// Integer options, as `getsockopt` returned them.
    public var options: [SocketOption]
    /// Unix only: the inode of the peer socket (sock_diag), nil for none.
    public var peerInode: UInt64?
    /// Unix only: the data waiting to be read, one element per datagram (zero-length ones
    /// included); for a byte stream, one element per run of bytes that came with the same
    /// credentials, cut where a message carried descriptors (they arrive with the read that ends
    /// there); nil for a listener, or when the queue held more than the capture keeps.
    public var queued: [Data]?
    /// Unix only: what came with each element of `queued`, in the same order (nil in images taken
    /// before ancillary data was kept: then only the bytes are sent again).
    public var ancillary: [QueuedAncillary]?
    /// Packet (`AF_PACKET`) only: its binding, and what a restore refuses.
    public var packet: PacketBinding?

    public init(inode: UInt64, domain: Int32, type: Int32, protocol: Int32, local: SocketAddress?, peer: SocketAddress?,
                listening: Bool, backlog: UInt32?, tcpState: UInt8?, options: [SocketOption],
                peerInode: UInt64? = nil, queued: [Data]? = nil) {
        self.inode = inode
        self.domain = domain
        self.type = type
        self.protocol = `protocol`
        self.local = local
        self.peer = peer
        self.listening = listening
        self.backlog = backlog
        self.tcpState = tcpState
        self.options = options
        self.peerInode = peerInode
        self.queued = queued
    }

    public var isInet: Bool { domain == 2 || domain == 10 }
    public var isUnix: Bool { domain == 1 }
    public var isPacket: Bool { domain == 17 }
    public var typeName: String {
        switch type {
        case 1: isInet ? "TCP" : "stream"
        case 2: isInet ? "UDP" : "datagram"
        case 5: "seqpacket"
        default: "type \(type)"
        }
    }
}

/// What one queued unix message carries besides its bytes.
public struct QueuedAncillary: Codable, Sendable, Equatable {
    /// Descriptors in flight (`SCM_RIGHTS`), in order, by number: a descriptor the process holds
    /// when the message carries that same open file description, otherwise one of
    /// `RestoreRecord.inFlight` (numbered above every descriptor of the process).
    public var rights: [Int32]?
    /// `SCM_CREDENTIALS` as the receiver reads them with `SO_PASSCRED`; pid 0 (uid and gid the
    /// overflow ids) when the sender attached none (neither end had `SO_PASSCRED` then).
    public var credentials: UnixCredentials?

    public init(rights: [Int32]? = nil, credentials: UnixCredentials? = nil) {
        self.rights = rights
        self.credentials = credentials
    }
}

/// What an `AF_PACKET` socket is bound to (`getsockname`'s `sockaddr_ll`), and what no simple
/// restore brings back.
public struct PacketBinding: Codable, Sendable, Equatable {
    /// The bound interface's index (0: every interface) and name (nil when unbound), as the
    /// socket's network namespace knows them. A restore binds by name: another host numbers
    /// its interfaces otherwise.
    public var interfaceIndex: Int32
    public var interface: String?
    /// The bound Ethernet protocol, in network byte order as `sll_protocol` holds it.
    public var protocolNumber: UInt16
    /// A receive or transmit ring is set up (`PACKET_RX_RING`/`PACKET_TX_RING`).
    public var ring: Bool
    /// `PACKET_FANOUT`: group id, type and flags; 0 when in no group.
    public var fanout: UInt32

    public init(interfaceIndex: Int32, interface: String?, protocolNumber: UInt16, ring: Bool, fanout: UInt32) {
        self.interfaceIndex = interfaceIndex
        self.interface = interface
        self.protocolNumber = protocolNumber
        self.ring = ring
        self.fanout = fanout
    }
}

/// `struct ucred`: a sender's process id, user id and group id.
public struct UnixCredentials: Codable, Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// A socket address: an IPv4/IPv6 address and port, or a unix path (`@` first for an
/// abstract name; the bytes exactly as the kernel gave them).
public struct SocketAddress: Codable, Sendable, Equatable, CustomStringConvertible {
    /// Dotted IPv4 or IPv6 text; nil for unix.
    public var address: String?
    public var port: UInt16?
    /// IPv6 scope (interface) id, 0 for none.
    public var scope: UInt32?
    /// Unix: the path bytes (leading NUL for an abstract name), without the trailing NUL.
    public var path: Data?

    public init(address: String, port: UInt16, scope: UInt32 = 0) {
        self.address = address
        self.port = port
        self.scope = scope == 0 ? nil : scope
    }

    public init(path: Data) {
        self.path = path
    }

    public var isAbstract: Bool { path?.first == 0 }

    public var description: String {
        if let path {
            return isAbstract ? "@" + String(decoding: path.dropFirst(), as: UTF8.self) : String(decoding: path, as: UTF8.self)
        }
        let host = address ?? "?"
        return (host.contains(":") ? "[\(host)]" : host) + ":\(port ?? 0)"
    }
}

/// One integer socket option: `setsockopt(level, name, value)`.
public struct SocketOption: Codable, Sendable, Equatable {
    public var level: Int32
    public var name: Int32
    /// For readers of the JSON: `SO_REUSEADDR`, `TCP_NODELAY`…
    public var label: String
    public var value: Int32

    public init(level: Int32, name: Int32, label: String, value: Int32) {
        self.level = level
        self.name = name
        self.label = label
        self.value = value
    }
}
