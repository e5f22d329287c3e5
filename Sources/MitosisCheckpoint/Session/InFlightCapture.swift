import Foundation
import MitosisInspect
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Records the descriptors in flight: those carried by messages queued on the process's unix
/// sockets (`SCM_RIGHTS`). The peek that read the queues installed them in *Mitosis* (never in
/// the target, whose descriptor table stays as it was even should Mitosis die halfway); each is
/// then either one of the process's own open file descriptions (`kcmp`), recorded by that
/// descriptor's number, or recorded like any descriptor — read from Mitosis's `/proc/self/fd`,
/// its state captured by the same captures as the process's own — under a number above every
/// descriptor of the process. A socket in flight has its own queue read the same way, so
/// descriptors in flight inside descriptors in flight are found too.
enum InFlightCapture {
    static func capture(pid: Int32, descriptors: [OpenDescriptor], received: [SocketCapture.Received],
                        record: inout RestoreRecord) throws {
        var pending = received
        defer { for item in pending { for right in item.rights { try? right.close() } } }
        guard !pending.isEmpty else { return }
        let own = Kernel.currentProcessID()
        let ownTarget = try TargetProcess.mitosis()
        let task = Kernel.procEntry(pid)
        var next = (descriptors.map(\.fd).max() ?? -1) + 1
        // In flight so far: the descriptor as recorded (its number the new one) and Mitosis's copy.
        var inFlight: [(descriptor: OpenDescriptor, local: FileDescriptor)] = []
        defer { for item in inFlight { try? item.local.close() } }
        var sockets = record.sockets ?? []
        while !pending.isEmpty {
            let item = pending.removeFirst()
            var numbers: [Int32] = []
            var fresh: [OpenDescriptor] = []  // numbered as Mitosis holds them, for the captures
            for right in item.rights {
                guard let local = try ProcessReader.descriptor(ownTarget, fd: right.rawValue) else {
                    throw MitosisError.system(operation: "reading a descriptor in flight", errno: .badFileDescriptor)
                }
                if let held = try descriptors.first(where: { candidate in
                    guard candidate.inode == local.inode, candidate.target == local.target else { return false }
                    return try Kernel.kcmpEqual(own, task, .file, Int(right.rawValue), Int(candidate.fd)) }) {
                    numbers.append(held.fd)
                    try? right.close()
                } else if let seen = try inFlight.first(where: { candidate in
                    guard candidate.descriptor.inode == local.inode, candidate.descriptor.target == local.target else { return false }
                    return try Kernel.kcmpEqual(own, own, .file, Int(right.rawValue), Int(candidate.local.rawValue)) }) {
                    numbers.append(seen.descriptor.fd)
                    try? right.close()
                } else {
                    var recorded = local
                    recorded.fd = next
                    // Close-on-exec belongs to a descriptor table, not to a file in flight.
                    recorded.flags &= ~UInt32(Linux.O_CLOEXEC)
                    recorded.flagNames = OpenFlags.names(recorded.flags)
                    next += 1
                    inFlight.append((recorded, right))
                    numbers.append(recorded.fd)
                    fresh.append(local)
                }
            }
            if let index = sockets.firstIndex(where: { $0.inode == item.inode }), item.message < (sockets[index].ancillary?.count ?? 0) {
                sockets[index].ancillary?[item.message].rights = numbers
            }
            guard !fresh.isEmpty else { continue }
            // The state of each new one, read through Mitosis's own copy, then renumbered.
            let renumber = Dictionary(fresh.map { local in
                (local.fd, inFlight.first { $0.local.rawValue == local.fd }!.descriptor.fd)
            }, uniquingKeysWith: { a, _ in a })
            for local in fresh where local.kind == .pipe && !(record.pipes ?? []).contains(where: { $0.inode == local.inode }) {
                let (bytes, capacity) = try Kernel.peekPipe(pid: own, fd: local.fd)
                record.pipes = (record.pipes ?? []) + [RestoreRecord.PipeContents(inode: local.inode, capacity: capacity, bytes: Data(bytes))]
            }
            let newSockets = fresh.filter { local in local.kind == .socket && !sockets.contains { $0.inode == local.inode } }
            var nested: [SocketCapture.Received] = []
            defer { pending += nested }
            sockets += try SocketCapture.capture(pid: own, descriptors: newSockets, namespaceOf: pid, received: &nested)
            record.fileContents = (record.fileContents ?? []) + (try FileContentCapture.capture(pid: own, descriptors: fresh, shared: []))
                .map { contents in var contents = contents; contents.fd = renumber[contents.fd]!; return contents }
            record.timerfds = (record.timerfds ?? []) + (try FileContentCapture.timerfds(pid: own, descriptors: fresh))
                .map { timer in var timer = timer; timer.fd = renumber[timer.fd]!; return timer }
            record.inotifyWatches = (record.inotifyWatches ?? []) + (try InotifyCapture.capture(pid: own, descriptors: fresh))
                .map { watch in var watch = watch; watch.fd = renumber[watch.fd]!; return watch }
        }
        record.sockets = sockets
        record.inFlight = inFlight.map(\.descriptor)
    }
}
