import Glibc
import SystemPackage

/// Reads one part of a live process's state from `/proc`, without stopping it. Each read is a
/// snapshot of that one file; `Introspector` combines them into a `ProcessModel`.
///
/// Errors: a process that does not exist or exits during the read throws `.noSuchProcess`; a
/// refused read throws `.permissionDenied`.
public enum ProcessReader {
    /// Every mapping of `pid`, with smaps sizes and VmFlags when `detailed` (the default);
    /// from the cheaper `/proc/PID/maps` otherwise.
    public static func mappings(pid: Int32, detailed: Bool = true) throws(MitosisError) -> [MemoryMapping] {
        ProcMaps.parse(try text(pid, detailed ? "smaps" : "maps"))
    }

    /// Every open descriptor of `pid`, ascending by number. Descriptors closed while they are
    /// read are left out; if the process itself is gone, `.noSuchProcess`.
    public static func descriptors(pid: Int32) throws(MitosisError) -> [OpenDescriptor] {
        let numbers = try list(pid, "fd").compactMap { Int32($0) }.sorted()
        var result: [OpenDescriptor] = []
        result.reserveCapacity(numbers.count)
        for fd in numbers {
            if let descriptor = try descriptor(pid: pid, fd: fd) { result.append(descriptor) }
        }
        return result
    }

    /// One open descriptor of `pid`; nil when `fd` is not open (or closes while it is read).
    public static func descriptor(pid: Int32, fd: Int32) throws(MitosisError) -> OpenDescriptor? {
        let link = "/proc/\(pid)/fd/\(fd)"
        let target: String
        let info: ProcFdinfo
        do {
            target = try Kernel.readLink(link)
            guard let parsed = ProcFdinfo(parsing: String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/\(fd)"), as: UTF8.self))
            else { return nil }
            info = parsed
        } catch .noSuchFileOrDirectory {
            try requireAlive(pid)
            return nil
        } catch {
            throw failure(error, pid: pid, reading: link)
        }
        // stat follows the magic link to the open file; it may be refused (a file on a FUSE mount).
        let status = try? Kernel.status(link)
        let device = status.map { DeviceNumber(encoded: UInt64($0.st_dev)) }
        let mode = status.map { UInt32($0.st_mode) }
        let special = status.flatMap { ($0.st_mode & S_IFMT) == S_IFCHR || ($0.st_mode & S_IFMT) == S_IFBLK
            ? DeviceNumber(encoded: UInt64($0.st_rdev)) : nil }
        var kind = ProcFdTarget.classify(target, mode: mode, specialDevice: special)
        // A regular file on an anonymous-device filesystem may be a POSIX message queue.
        if kind.kind == .file, device?.major == 0,
           (try? Kernel.fileSystemType(link)) == Kernel.messageQueueFileSystem {
            kind.kind = .messageQueue
        }
        var descriptor = OpenDescriptor(
            fd: fd, kind: kind.kind, target: target, path: kind.path, anonInodeName: kind.anonInodeName,
            inode: status.map { UInt64($0.st_ino) } ?? info.inode ?? kind.inode ?? 0,
            device: device, specialDevice: special, position: info.position, flags: info.flags,
            mountId: info.mountId, deleted: kind.deleted)
        switch kind.kind {
        case .eventfd: descriptor.eventfd = info.eventfd
        case .epoll: descriptor.epoll = info.epoll
        case .signalfd: descriptor.signalfd = info.signalfd
        case .timerfd: descriptor.timerfd = info.timerfd
        case .inotify: descriptor.inotify = info.inotify
        case .fanotify: descriptor.fanotify = info.fanotify
        case .pidfd: descriptor.pidfd = info.pidfd
        default: break
        }
        return descriptor
    }

    /// Throws `.noSuchProcess` unless `pid` still exists and has not exited.
    static func requireAlive(_ pid: Int32) throws(MitosisError) {
        guard let text = try? Kernel.readFile("/proc/\(pid)/stat"),
              let stat = ProcStat(parsing: String(decoding: text, as: UTF8.self)),
              stat.state != "Z", stat.state != "X"
        else { throw .noSuchProcess(pid) }
    }

    /// The names in `/proc/PID/<directory>`.
    static func list(_ pid: Int32, _ directory: String) throws(MitosisError) -> [String] {
        let path = "/proc/\(pid)/\(directory)"
        do {
            return try Kernel.listDirectory(path)
        } catch {
            throw failure(error, pid: pid, reading: path)
        }
    }

    /// The text of `/proc/PID/<file>`.
    static func text(_ pid: Int32, _ file: String) throws(MitosisError) -> String {
        let path = "/proc/\(pid)/\(file)"
        do {
            return String(decoding: try Kernel.readFile(path), as: UTF8.self)
        } catch {
            throw failure(error, pid: pid, reading: path)
        }
    }

    /// Translates an errno from reading `path` of `pid` into the error a user can act on.
    static func failure(_ error: Errno, pid: Int32, reading path: String) -> MitosisError {
        switch error {
        case .noSuchFileOrDirectory, .noSuchProcess: return .noSuchProcess(pid)
        case .permissionDenied, .notPermitted: return .permissionDenied(pid, operation: "read \(path) of")
        default: return .system(operation: "reading \(path)", errno: error)
        }
    }
}
