import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Inotify instances with their watches. Events queued at the checkpoint are not restored
/// (as with CRIU): the watches are, with their masks and their numbers.
extension Tracer {
    /// The most watch numbers skipped to give one watch its number: a process that added and
    /// removed watches a million times would make the restore that much slower.
    static let inotifySkipLimit: Int32 = 1 << 16
    /// Where in the scratch area the `IN_IGNORED` events are read to: after a path of up to
    /// PATH_MAX bytes, room for 256 events.
    static let ignoredEvents = WorkArea.text + 4096

    /// An inotify instance and its watches, each with its original watch number. A new instance
    /// numbers watches from 1, cyclically (a removed number is not given again until the count
    /// wraps), so a watch whose number is higher than the one the kernel gives is added, removed
    /// and added again until the numbers meet. Each removal queues an `IN_IGNORED` event, which
    /// the process never asked for: they are read away (16 bytes each, no name), a batch at a
    /// time, so the queue neither shows them nor overflows.
    func createInotify(_ descriptor: OpenDescriptor, paths: [InotifyWatchPath], area: WorkArea) throws -> UInt64 {
        let flags = descriptor.flags & UInt32(Linux.O_NONBLOCK | Linux.O_CLOEXEC)  // IN_NONBLOCK, IN_CLOEXEC
        let fd = try huskCall("creating the inotify of fd \(descriptor.fd)", SyscallNumber.inotify_init1, [UInt64(flags)])
        let byNumber = Dictionary(paths.map { ($0.wd, $0.path) }, uniquingKeysWith: { a, _ in a })
        for watch in (descriptor.inotify ?? []).sorted(by: { $0.wd < $1.wd }) {
            guard let path = byNumber[watch.wd] else {
                throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no path for watch \(watch.wd)")
            }
            let step = "watching \(path) as watch \(watch.wd) of fd \(descriptor.fd)"
            let text = try huskText(path, area: area)
            var skipped: Int32 = 0, queued: UInt64 = 0
            func readIgnoredEvents() throws {
                guard queued > 0 else { return }
                let read = try huskCall("reading the IN_IGNORED events of fd \(descriptor.fd)", SyscallNumber.read,
                                        [fd, area.scratch + Self.ignoredEvents, queued * 16])
                guard read == queued * 16 else { throw StepFailure(step: step, detail: "read \(read) bytes of \(queued) IN_IGNORED events") }
                queued = 0
            }
            while true {
                let given = Int32(truncatingIfNeeded: try huskCall(step, SyscallNumber.inotify_add_watch, [fd, text, UInt64(watch.mask)]))
                if given == watch.wd { break }
                guard given < watch.wd, skipped < Self.inotifySkipLimit else {
                    throw StepFailure(step: step, detail: "the kernel gave watch number \(given)")
                }
                try huskCall(step, SyscallNumber.inotify_rm_watch, [fd, UInt64(given)])
                skipped += 1
                queued += 1
                if queued == 256 { try readIgnoredEvents() }
            }
            try readIgnoredEvents()
        }
        return fd
    }
}
