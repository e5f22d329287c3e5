import Foundation
import MitosisKernel
import MitosisModel

/// Finds, at the freeze, the path of every inotify watch. The kernel reports a watch by inode and
/// file handle (fdinfo's `f_handle`), and a restore can add a watch only by path: the handle is
/// opened on the watched file system's mount and its path read back. A watch whose path cannot
/// be found (its file deleted, the handle refused) is left out; the restore then refuses the
/// descriptor by name instead of watching something else.
enum InotifyCapture {
    static func capture(pid: Int32, descriptors: [OpenDescriptor]) throws -> [InotifyWatchPath] {
        let inotifies = descriptors.filter { $0.kind == .inotify && !($0.inotify ?? []).isEmpty }
        guard !inotifies.isEmpty else { return [] }
        let entry = Kernel.procEntry(pid)
        let mounts = ProcMountinfo.parse(String(decoding: try Kernel.readFile("/proc/\(entry)/mountinfo"), as: UTF8.self))
        var paths: [InotifyWatchPath] = []
        for descriptor in inotifies {
            let text = String(decoding: try Kernel.readFile("/proc/\(entry)/fdinfo/\(descriptor.fd)"), as: UTF8.self)
            for line in text.split(separator: "\n") where line.hasPrefix("inotify ") {
                let fields = ProcFields(line)
                guard let wd = fields.hex("wd").flatMap({ Int32(exactly: $0) }), let device = fields.hex("sdev"),
                      let type = fields.hex("fhandle-type").flatMap({ Int32(exactly: $0) }), let handle = fields.bytes("f_handle"),
                      let path = path(of: handle, type: type, device: DeviceNumber(kernel: device), pid: entry, mounts: mounts)
                else { continue }
                paths.append(InotifyWatchPath(fd: descriptor.fd, wd: wd, path: path))
            }
        }
        return paths.sorted { ($0.fd, $0.wd) < ($1.fd, $1.wd) }
    }

    /// Tries the mounts of the watched file system, whole-file-system mounts first: through a
    /// bind mount of a subdirectory, a file outside it has no path.
    private static func path(of handle: [UInt8], type: Int32, device: DeviceNumber, pid: Int32, mounts: [MountInfo]) -> String? {
        let candidates = mounts.filter { $0.device == device }.sorted { ($0.root == "/" ? 0 : 1) < ($1.root == "/" ? 0 : 1) }
        for mount in candidates {
            guard let path = try? Kernel.pathOfHandle(pid: pid, mountPoint: mount.mountPoint, type: type, bytes: handle),
                  path.hasPrefix("/"), !path.hasSuffix(" (deleted)") else { continue }
            return path
        }
        return nil
    }
}
