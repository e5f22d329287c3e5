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
        // A byte search: `contains(":")` would go through Foundation's `range(of:)`, which a graph pays per socket.
        let host = address.utf8.contains(UInt8(ascii: ":")) ? "[\(address)]" : address
        return "\(host):\(port == 0 ? "*" : String(port))"
    }
}
