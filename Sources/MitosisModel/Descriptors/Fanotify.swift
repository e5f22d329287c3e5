/// A fanotify group: its `fanotify_init` flags and its marks.
public struct FanotifyState: Equatable, Hashable, Sendable, Codable {
    public var flags: UInt32
    /// The `event_f_flags` given to `fanotify_init` (open flags of event descriptors).
    public var eventFlags: UInt32
    public var marks: [FanotifyMark]
}

/// One fanotify mark: on an inode, a mount, or a whole filesystem.
public struct FanotifyMark: Equatable, Hashable, Sendable, Codable {
    public enum Target: String, Sendable, Codable { case inode, mount, filesystem }
    public var target: Target
    /// The marked inode (inode marks).
    public var inode: UInt64?
    /// The device of the marked inode or filesystem.
    public var device: DeviceNumber?
    /// The marked mount (mount marks).
    public var mountId: Int?
    public var markFlags: UInt32
    public var mask: UInt64
    public var ignoredMask: UInt64

    package init(
        target: Target,
        inode: UInt64? = nil,
        device: DeviceNumber? = nil,
        mountId: Int? = nil,
        markFlags: UInt32,
        mask: UInt64,
        ignoredMask: UInt64
    ) {
        self.target = target
        self.inode = inode
        self.device = device
        self.mountId = mountId
        self.markFlags = markFlags
        self.mask = mask
        self.ignoredMask = ignoredMask
    }
}
