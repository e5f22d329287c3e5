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
