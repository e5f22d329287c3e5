import Foundation
import MitosisKernel
import MitosisModel

/// Keeps, at the freeze, the content of every file the process holds that cannot be opened
/// again by path (memfds, deleted files), read through a copy of its descriptor with `pread`
/// (the process's offset does not move), and each timerfd's remaining time beside its clock.
enum FileContentCapture {
    static func capture(pid: Int32, descriptors: [OpenDescriptor], shared: [RestoreRecord.SharedDescription]) throws -> [FileContents] {
        let duplicates = Set(shared.map(\.fd))
        let wanted = descriptors.filter { ($0.kind == .memfd || ($0.kind == .file && $0.deleted)) && !duplicates.contains($0.fd) }
        guard !wanted.isEmpty else { return [] }
        let pidfd = try Kernel.pidfdOpen(pid, task: Kernel.procEntry(pid))
        defer { try? pidfd.close() }
        return try wanted.map { descriptor in
            let copy = try Kernel.pidfdGetfd(pidfd, descriptor.fd)
            defer { try? copy.close() }
            let status = try Kernel.status(of: copy)
            let size = UInt64(status.size)
            let bytes = size <= FileContents.limit ? Data(try Kernel.readAt(copy, offset: 0, count: Int(size))) : nil
            return FileContents(fd: descriptor.fd, size: size, mode: UInt32(status.mode & 0o7777),
                                seals: descriptor.kind == .memfd ? try Kernel.seals(copy) : nil, bytes: bytes)
        }
    }

    static func timerfds(pid: Int32, descriptors: [OpenDescriptor]) throws -> [TimerfdRestoreState] {
        try descriptors.compactMap { descriptor in
            guard descriptor.kind == .timerfd, let clock = descriptor.timerfd?.clockId else { return nil }
            let now = try Kernel.clockNow(clock)
            let text = String(decoding: try Kernel.readFile("/proc/\(Kernel.procEntry(pid))/fdinfo/\(descriptor.fd)"), as: UTF8.self)
            guard let state = ProcFdinfo(parsing: text)?.timerfd else {
                throw MitosisError.system(operation: "reading the timerfd \(descriptor.fd) of \(pid)", errno: .ioError)
            }
            return TimerfdRestoreState(fd: descriptor.fd, state: state, clockNow: now)
        }
    }
}
