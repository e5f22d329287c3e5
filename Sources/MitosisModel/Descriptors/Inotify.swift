/// One inotify watch.
public struct InotifyWatch: Equatable, Hashable, Sendable, Codable {
    /// The watch descriptor `inotify_add_watch` returned.
    public var wd: Int32
    /// The watched inode and its filesystem's device.
    public var inode: UInt64
    public var device: DeviceNumber
    /// `IN_*` event mask.
    public var mask: UInt32
    public var ignoredMask: UInt32

    package init(wd: Int32, inode: UInt64, device: DeviceNumber, mask: UInt32, ignoredMask: UInt32) {
        self.wd = wd
        self.inode = inode
        self.device = device
        self.mask = mask
        self.ignoredMask = ignoredMask
    }
}

/// What a restore needs of one inotify watch: the watch names an inode, and a new watch can only
/// be added by path, so the path is found at the checkpoint (through the watch's file handle).
public struct InotifyWatchPath: Codable, Sendable, Equatable {
    /// The inotify descriptor holding the watch.
    public var fd: Int32
    public var wd: Int32
    /// The watched file or directory, as the process saw it at the checkpoint.
    public var path: String

    public init(fd: Int32, wd: Int32, path: String) {
        self.fd = fd
        self.wd = wd
        self.path = path
    }
}
