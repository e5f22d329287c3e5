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
