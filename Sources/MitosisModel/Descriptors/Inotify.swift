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
