/// One file an epoll instance watches: a `tfd:` line of the epoll's fdinfo.
public struct EpollWatch: Equatable, Hashable, Sendable, Codable {
    /// The watched descriptor number, in the process that added it.
    public var fd: Int32
    /// The requested event mask (`EPOLLERR | EPOLLHUP` are always included by the kernel).
    public var events: UInt32
    /// `events` decoded (`EPOLLIN`, `EPOLLOUT`, `EPOLLET`…).
    public var eventNames: [String]
    /// The user data registered with the watch.
    public var data: UInt64
    /// The watched file's position, inode and device (kernel `dev_t` encoding) at registration.
    public var position: UInt64?
    public var inode: UInt64?
    public var device: DeviceNumber?

    package init(
        fd: Int32,
        events: UInt32,
        eventNames: [String],
        data: UInt64,
        position: UInt64? = nil,
        inode: UInt64? = nil,
        device: DeviceNumber? = nil
    ) {
        self.fd = fd
        self.events = events
        self.eventNames = eventNames
        self.data = data
        self.position = position
        self.inode = inode
        self.device = device
    }

    package static let eventTable: [(UInt32, String)] = [
        (0x1, "EPOLLIN"), (0x2, "EPOLLPRI"), (0x4, "EPOLLOUT"), (0x8, "EPOLLERR"), (0x10, "EPOLLHUP"),
        (0x20, "EPOLLNVAL"), (0x40, "EPOLLRDNORM"), (0x80, "EPOLLRDBAND"), (0x100, "EPOLLWRNORM"),
        (0x200, "EPOLLWRBAND"), (0x400, "EPOLLMSG"), (0x2000, "EPOLLRDHUP"), (1 << 28, "EPOLLEXCLUSIVE"),
        (1 << 29, "EPOLLWAKEUP"), (1 << 30, "EPOLLONESHOT"), (1 << 31, "EPOLLET"),
    ]

    public static func names(_ events: UInt32) -> [String] {
        eventTable.filter { events & $0.0 != 0 }.map(\.1)
    }
}
