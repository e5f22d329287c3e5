/// One line of `/proc/PID/mountinfo`: a mount as the process sees it.
public struct MountInfo: Equatable, Hashable, Sendable, Codable {
    public var mountId: Int
    public var parentId: Int
    /// The device of the mounted filesystem (`st_dev` of its files).
    public var device: DeviceNumber
    /// The path inside the filesystem that is mounted (`/` for a whole filesystem).
    public var root: String
    public var mountPoint: String
    public var fileSystemType: String
    public var source: String

    public init(mountId: Int, parentId: Int, device: DeviceNumber, root: String, mountPoint: String,
                fileSystemType: String, source: String) {
        self.mountId = mountId
        self.parentId = parentId
        self.device = device
        self.root = root
        self.mountPoint = mountPoint
        self.fileSystemType = fileSystemType
        self.source = source
    }
}
