/// What a `/proc/PID/fd/N` link target (plus the `stat` of the file behind it) says a descriptor is.
///
///     pipe:[71584]                 socket:[71605]            anon_inode:[eventfd]
///     anon_inode:inotify           /memfd:scratch (deleted)  /tmp/x (deleted)      net:[4026531833]
public enum ProcFdTarget {
    public struct Classification: Equatable, Sendable {
        public var kind: OpenDescriptor.Kind
        public var path: String?
        public var anonInodeName: String?
        /// The inode written in the target (`pipe:[N]`, `socket:[N]`, `net:[N]`).
        public var inode: UInt64?
        public var deleted: Bool
    }

    /// `S_IFMT` and the file types of `st_mode`.
    package static let typeMask: UInt32 = 0o170000
    package static let directoryType: UInt32 = 0o040000
    package static let characterType: UInt32 = 0o020000
    package static let blockType: UInt32 = 0o060000
    package static let fifoType: UInt32 = 0o010000

    /// Classifies a link target. `mode` and `specialDevice` come from `stat` (nil when refused).
    /// A regular file on the mqueue filesystem is a message queue, which only `statfs` can tell:
    /// the caller passes `onMessageQueueFileSystem`.
    public static func classify(_ target: String, mode: UInt32?, specialDevice: DeviceNumber?,
                                onMessageQueueFileSystem: Bool = false) -> Classification {
        if let inode = bracketed(target, prefix: "pipe:") {
            return Classification(kind: .pipe, inode: inode, deleted: false)
        }
        if let inode = bracketed(target, prefix: "socket:") {
            return Classification(kind: .socket, inode: inode, deleted: false)
        }
        if target.hasPrefix("pidfd:") {  // pidfs since 6.9 may name pidfds this way
            return Classification(kind: .pidfd, anonInodeName: "pidfd", deleted: false)
        }
        if target.hasPrefix("anon_inode:") {
            var name = target.dropFirst("anon_inode:".count)
            if name.hasPrefix("["), name.hasSuffix("]") { name = name.dropFirst().dropLast() }
            let kind: OpenDescriptor.Kind
            switch name {
            case "eventfd": kind = .eventfd
            case "eventpoll": kind = .epoll
            case "signalfd": kind = .signalfd
            case "timerfd": kind = .timerfd
            case "inotify": kind = .inotify
            case "fanotify": kind = .fanotify
            case "pidfd": kind = .pidfd
            case "io_uring": kind = .ioUring
            default: kind = .anonInode
            }
            return Classification(kind: kind, anonInodeName: String(name), deleted: false)
        }
        guard target.hasPrefix("/") else {
            // `net:[4026531833]`, `mnt:[…]` and other pseudo files.
            let inode = target.firstIndex(of: ":").flatMap { bracketed(target, prefix: String(target[...$0])) }
            return Classification(kind: .other, inode: inode, deleted: false)
        }
        var path = target
        let deleted = path.hasSuffix(" (deleted)")
        if deleted { path.removeLast(" (deleted)".count) }
        let kind: OpenDescriptor.Kind
        switch (mode ?? 0) & typeMask {
        case directoryType: kind = .directory
        case fifoType: kind = .fifo
        case blockType: kind = .blockDevice
        case characterType: kind = isTerminal(specialDevice) ? .tty : .characterDevice
        default:
            if path.hasPrefix("/memfd:") && deleted { kind = .memfd }
            else if onMessageQueueFileSystem { kind = .messageQueue }
            else { kind = .file }
        }
        return Classification(kind: kind, path: path, deleted: deleted)
    }

    /// Terminal majors: 4 (tty0…, ttyS), 5 (/dev/tty, /dev/console, /dev/ptmx), 136–143 (pts).
    package static func isTerminal(_ device: DeviceNumber?) -> Bool {
        guard let major = device?.major else { return false }
        return major == 4 || major == 5 || (136...143).contains(major)
    }

    /// `prefix[N]` → N.
    package static func bracketed(_ target: String, prefix: String) -> UInt64? {
        guard target.hasPrefix(prefix) else { return nil }
        let rest = target.dropFirst(prefix.count)
        guard rest.hasPrefix("["), rest.hasSuffix("]") else { return nil }
        return UInt64(rest.dropFirst().dropLast())
    }
}
