import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 4: descriptors, in ascending order. Each kind has its file beside this one.
extension Tracer {
    /// Creates every descriptor again at its number, in ascending order: a new descriptor
    /// takes the lowest free number, never above the one wanted, and is then moved there.
    /// Established connections are left in repair mode, in `connections`, for `finishConnections`.
    func restoreDescriptors(_ plan: RestorePlan, area: WorkArea, connections: inout [PendingConnection]) throws {
        let descriptors = (plan.manifest.descriptors ?? []).sorted(by: { $0.fd < $1.fd })
        // Pipes first, both ends parked above every number wanted, so that no temporary
        // descriptor sits on a number another descriptor needs.
        let parked = try createPipes(descriptors, contents: plan.record.pipes ?? [], above: UInt64(descriptors.last?.fd ?? 0), area: area)
        for descriptor in descriptors {
            let fd: UInt64
            switch descriptor.kind {
            case .pipe:
                let end = parked[PipeEnd(inode: descriptor.inode, write: descriptor.flags & 3 == 1)]!
                try huskCall("placing the pipe end fd \(descriptor.fd)", SyscallNumber.dup3,
                             [end, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
                continue
            case .eventfd:
                fd = try createEventfd(descriptor, area: area)
            case .socket:
                // Every descriptor of one socket after the first is a duplicate of it.
                if let first = descriptors.first(where: { $0.inode == descriptor.inode && $0.fd < descriptor.fd }) {
                    fd = try huskCall("duplicating fd \(first.fd)", SyscallNumber.fcntl, [UInt64(first.fd), 1030 /* F_DUPFD_CLOEXEC */, 0])
                } else {
                    guard let captured = plan.record.connections?.first(where: { $0.inode == descriptor.inode }) else {
                        throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "the image holds no state for socket \(descriptor.target)")
                    }
                    let created = try createConnection(descriptor, captured)
                    connections.append(created.pending)
                    fd = created.fd
                }
            case .epoll:
                fd = try huskCall("creating the epoll of fd \(descriptor.fd)", SyscallNumber.epoll_create1,
                                  [UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
            default:
                fd = try openFile(descriptor, area: area)
            }
            if fd != UInt64(descriptor.fd) {
                try huskCall("moving fd \(fd) to \(descriptor.fd)", SyscallNumber.dup3,
                             [fd, UInt64(descriptor.fd), UInt64(descriptor.flags & UInt32(Linux.O_CLOEXEC))])
                try huskCall("closing fd \(fd)", SyscallNumber.close, [fd])
            }
        }
        for end in parked.values { try huskCall("closing the parked pipe end \(end)", SyscallNumber.close, [end]) }
        // Watches last, once every watched descriptor exists, and by injection: the kernel keys
        // a watch by the caller's fd number, so they must be added from the process's own table.
        for descriptor in descriptors where descriptor.kind == .epoll {
            for watch in descriptor.epoll ?? [] {
                var event = [UInt8](repeating: 0, count: 12)  // struct epoll_event is packed on x86-64
                withUnsafeBytes(of: watch.events.littleEndian) { event.replaceSubrange(0..<4, with: $0) }
                withUnsafeBytes(of: watch.data.littleEndian) { event.replaceSubrange(4..<12, with: $0) }
                try event.withUnsafeBytes { try huskWrite("passing an epoll event", area.scratch + WorkArea.text, $0) }
                try huskCall("adding fd \(watch.fd) to the epoll of fd \(descriptor.fd)", SyscallNumber.epoll_ctl,
                             [UInt64(descriptor.fd), 1 /* EPOLL_CTL_ADD */, UInt64(watch.fd), area.scratch + WorkArea.text])
            }
        }
    }
}
