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
