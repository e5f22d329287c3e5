/// One open file descriptor of a process: what `/proc/PID/fd/N` points at, what `stat` says of
/// it, and what `/proc/PID/fdinfo/N` adds (position, flags, and the kind-specific state).
///
/// Sockets carry only their inode here; their protocol state belongs to the sockets area.
public struct OpenDescriptor: Equatable, Hashable, Sendable, Codable {
    /// The descriptor number in the process.
    public var fd: Int32
    public var kind: Kind
    /// The `/proc/PID/fd/N` link target verbatim (`/tmp/x (deleted)`, `pipe:[123]`, `anon_inode:[eventfd]`).
    public var target: String
    /// For objects with a path (files, directories, FIFOs, devices, memfds as `/memfd:name`,
    /// POSIX message queues as `/name`): the path without ` (deleted)`; nil otherwise.
    public var path: String?
    /// For anonymous-inode objects, the kernel's name for them (`eventfd`, `eventpoll`,
    /// `inotify`, `userfaultfd`, `bpf-map`…); nil otherwise.
    public var anonInodeName: String?
    /// The inode of the open object (for pipes and sockets, the number in `pipe:[N]`/`socket:[N]`).
    public var inode: UInt64
    /// The device of the filesystem holding the inode (`stat.st_dev`); nil when stat was refused.
    public var device: DeviceNumber?
    /// The device a character or block device file stands for (`stat.st_rdev`); nil for others.
    public var specialDevice: DeviceNumber?
    /// The file offset (`pos:` of fdinfo).
    public var position: UInt64
    /// The open file status flags (`flags:` of fdinfo, octal in the file), `O_CLOEXEC` included
    /// when the descriptor has close-on-exec.
    public var flags: UInt32
    /// `flags` decoded: the access mode first (`O_RDONLY`, `O_WRONLY`, `O_RDWR`), then each set flag.
    public var flagNames: [String]
    /// The mount the file was opened through (`mnt_id:` of fdinfo; see `/proc/PID/mountinfo`).
    public var mountId: Int
    /// The file was unlinked after it was opened (the link target ends with ` (deleted)`).
    public var deleted: Bool

    /// What fdinfo adds for this kind of descriptor, when the kind has anything to add.
    public var state: State?

    /// Kind-specific state from fdinfo: one case per kind that has some.
    public enum State: Equatable, Hashable, Sendable {
        case eventfd(EventfdState)
        case epoll([EpollWatch])
        case signalfd(SignalfdState)
        case timerfd(TimerfdState)
        case inotify([InotifyWatch])
        case fanotify(FanotifyState)
        case pidfd(PidfdState)
    }

    public var eventfd: EventfdState? { if case .eventfd(let value) = state { value } else { nil } }
    public var epoll: [EpollWatch]? { if case .epoll(let value) = state { value } else { nil } }
    public var signalfd: SignalfdState? { if case .signalfd(let value) = state { value } else { nil } }
    public var timerfd: TimerfdState? { if case .timerfd(let value) = state { value } else { nil } }
    public var inotify: [InotifyWatch]? { if case .inotify(let value) = state { value } else { nil } }
    public var fanotify: FanotifyState? { if case .fanotify(let value) = state { value } else { nil } }
    public var pidfd: PidfdState? { if case .pidfd(let value) = state { value } else { nil } }

    public init(fd: Int32, kind: Kind, target: String, path: String? = nil, anonInodeName: String? = nil,
                inode: UInt64, device: DeviceNumber? = nil, specialDevice: DeviceNumber? = nil,
                position: UInt64 = 0, flags: UInt32 = 0, mountId: Int = 0, deleted: Bool = false) {
        self.fd = fd
        self.kind = kind
        self.target = target
        self.path = path
        self.anonInodeName = anonInodeName
        self.inode = inode
        self.device = device
        self.specialDevice = specialDevice
        self.position = position
        self.flags = flags
        self.flagNames = OpenFlags.names(flags)
        self.mountId = mountId
        self.deleted = deleted
    }

    /// What a descriptor refers to.
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case file
        case directory = "dir"
        /// An anonymous pipe (`pipe:[N]`).
        case pipe
        /// A named pipe opened through its path.
        case fifo
        case socket
        case eventfd
        case epoll
        case signalfd
        case timerfd
        case inotify
        case fanotify
        /// A `memfd_create` file (`/memfd:name (deleted)`).
        case memfd
        case pidfd
        case ioUring = "io_uring"
        /// A terminal: character device major 4 (tty, ttyS), 5 (/dev/tty, ptmx) or 136–143 (pts).
        case tty
        /// Another character device (`/dev/null`, `/dev/urandom`…).
        case characterDevice = "char_device"
        case blockDevice = "block_device"
        /// A POSIX message queue (`mq_open`): a file on the mqueue filesystem.
        case messageQueue = "mqueue"
        /// Another anonymous-inode object; `anonInodeName` names it (`userfaultfd`, `bpf-map`…).
        case anonInode = "anon_inode"
        /// Anything else (namespace descriptors `net:[…]`, …).
        case other
    }
}

/// The JSON keeps one key per kind (`"eventfd": {…}`, `"epoll": […]`), as before `State` existed
/// (Docs/inspect-json.md).
extension OpenDescriptor {
    private enum CodingKeys: String, CodingKey {
        case fd, kind, target, path, anonInodeName, inode, device, specialDevice, position, flags, flagNames
        case mountId, deleted, eventfd, epoll, signalfd, timerfd, inotify, fanotify, pidfd
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        fd = try container.decode(Int32.self, forKey: .fd)
        kind = try container.decode(Kind.self, forKey: .kind)
        target = try container.decode(String.self, forKey: .target)
        path = try container.decodeIfPresent(String.self, forKey: .path)
        anonInodeName = try container.decodeIfPresent(String.self, forKey: .anonInodeName)
        inode = try container.decode(UInt64.self, forKey: .inode)
        device = try container.decodeIfPresent(DeviceNumber.self, forKey: .device)
        specialDevice = try container.decodeIfPresent(DeviceNumber.self, forKey: .specialDevice)
        position = try container.decode(UInt64.self, forKey: .position)
        flags = try container.decode(UInt32.self, forKey: .flags)
        flagNames = try container.decode([String].self, forKey: .flagNames)
        mountId = try container.decode(Int.self, forKey: .mountId)
        deleted = try container.decode(Bool.self, forKey: .deleted)
        if let value = try container.decodeIfPresent(EventfdState.self, forKey: .eventfd) { state = .eventfd(value) }
        else if let value = try container.decodeIfPresent([EpollWatch].self, forKey: .epoll) { state = .epoll(value) }
        else if let value = try container.decodeIfPresent(SignalfdState.self, forKey: .signalfd) { state = .signalfd(value) }
        else if let value = try container.decodeIfPresent(TimerfdState.self, forKey: .timerfd) { state = .timerfd(value) }
        else if let value = try container.decodeIfPresent([InotifyWatch].self, forKey: .inotify) { state = .inotify(value) }
        else if let value = try container.decodeIfPresent(FanotifyState.self, forKey: .fanotify) { state = .fanotify(value) }
        else if let value = try container.decodeIfPresent(PidfdState.self, forKey: .pidfd) { state = .pidfd(value) }
        else { state = nil }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(fd, forKey: .fd)
        try container.encode(kind, forKey: .kind)
        try container.encode(target, forKey: .target)
        try container.encodeIfPresent(path, forKey: .path)
        try container.encodeIfPresent(anonInodeName, forKey: .anonInodeName)
        try container.encode(inode, forKey: .inode)
        try container.encodeIfPresent(device, forKey: .device)
        try container.encodeIfPresent(specialDevice, forKey: .specialDevice)
        try container.encode(position, forKey: .position)
        try container.encode(flags, forKey: .flags)
        try container.encode(flagNames, forKey: .flagNames)
        try container.encode(mountId, forKey: .mountId)
        try container.encode(deleted, forKey: .deleted)
        switch state {
        case .eventfd(let value): try container.encode(value, forKey: .eventfd)
        case .epoll(let value): try container.encode(value, forKey: .epoll)
        case .signalfd(let value): try container.encode(value, forKey: .signalfd)
        case .timerfd(let value): try container.encode(value, forKey: .timerfd)
        case .inotify(let value): try container.encode(value, forKey: .inotify)
        case .fanotify(let value): try container.encode(value, forKey: .fanotify)
        case .pidfd(let value): try container.encode(value, forKey: .pidfd)
        case nil: break
        }
    }
}

extension OpenDescriptor: JSONNodeConvertible {
    /// As `encode(to:)`, key for key; the kind-specific state through the encoder. Added in
    /// the order of their snake_case keys, so that sorting them only compares neighbours.
    package func jsonNode(keys: KeyCache) throws -> JSONNode {
        let object = JSONObjectBox()
        object.entries.reserveCapacity(14)
        if let anonInodeName { object.add("anonInodeName", .string(anonInodeName), keys: keys) }
        object.add("deleted", .bool(deleted), keys: keys)
        if let device { object.add("device", device.jsonNode(keys: keys), keys: keys) }
        object.add("fd", .int(Int64(fd)), keys: keys)
        let names = JSONArrayBox()
        names.elements = flagNames.map { .string($0) }
        object.add("flagNames", .array(names), keys: keys)
        object.add("flags", .uint(UInt64(flags)), keys: keys)
        object.add("inode", .uint(inode), keys: keys)
        object.add("kind", .string(kind.rawValue), keys: keys)
        object.add("mountId", .int(Int64(mountId)), keys: keys)
        if let path { object.add("path", .string(path), keys: keys) }
        object.add("position", .uint(position), keys: keys)
        if let specialDevice { object.add("specialDevice", specialDevice.jsonNode(keys: keys), keys: keys) }
        object.add("target", .string(target), keys: keys)
        func wrap<T: Encodable>(_ value: T, _ key: String) throws {
            object.add(key, try JSONTreeEncoder.wrap(value, keys: keys, codingPath: []), keys: keys)
        }
        switch state {
        case .eventfd(let value): try wrap(value, "eventfd")
        case .epoll(let value): try wrap(value, "epoll")
        case .signalfd(let value): try wrap(value, "signalfd")
        case .timerfd(let value): try wrap(value, "timerfd")
        case .inotify(let value): try wrap(value, "inotify")
        case .fanotify(let value): try wrap(value, "fanotify")
        case .pidfd(let value): try wrap(value, "pidfd")
        case nil: break
        }
        return .object(object)
    }
}

extension DeviceNumber {
    /// As the synthesized `encode(to:)`: `{"major", "minor"}`.
    func jsonNode(keys: KeyCache) -> JSONNode {
        let object = JSONObjectBox()
        object.add("major", .uint(UInt64(major)), keys: keys)
        object.add("minor", .uint(UInt64(minor)), keys: keys)
        return .object(object)
    }
}

/// `open(2)` status flags as fdinfo prints them, decoded to their names (x86_64 values).
public enum OpenFlags {
    package static let table: [(UInt32, String)] = [
        (0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"),
        (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"), (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"), (0o2000000, "O_CLOEXEC"),
        (0o4000000, "O_SYNC"), (0o10000000, "O_PATH"), (0o20000000, "O_TMPFILE"),
    ]

    /// The access mode name, then the name of every set flag; unknown bits as one octal `0o…` entry.
    public static func names(_ flags: UInt32) -> [String] {
        var names: [String] = [["O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"][Int(flags & 3)]]
        var rest = flags & ~3
        for (bit, name) in table where rest & bit != 0 {
            names.append(name)
            rest &= ~bit
        }
        if rest != 0 { names.append("0o" + String(rest, radix: 8)) }
        return names
    }
}
