import CMitosis
import Glibc
import MitosisModel
import SystemPackage

extension SyscallNumber {
    package static let clock_gettime = Int(SYS_clock_gettime)
}

/// Clock ids (linux/time.h).
package enum ClockID {
    package static let realtime: Int32 = 0
    package static let monotonic: Int32 = 1
    package static let boottime: Int32 = 7
}

/// The offsets of a time namespace: what its `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` read more
/// than the kernel's own clocks (negative: less). Offsets are absolute, not relative to the
/// namespace a new one is made from (time_namespaces(7)).
package struct TimeNamespaceOffsets: Sendable, Equatable {
    package var monotonic: TimeSpec
    package var boottime: TimeSpec

    package init(monotonic: TimeSpec, boottime: TimeSpec) {
        self.monotonic = monotonic
        self.boottime = boottime
    }

    /// Parses `/proc/PID/timens_offsets` ("monotonic S NS" and "boottime S NS" lines); nil when
    /// either line is missing or malformed.
    package init?(parsing text: String) {
        var values: [String: TimeSpec] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 3, let seconds = Int64(fields[1]), let nanoseconds = Int64(fields[2]) else { return nil }
            values[String(fields[0])] = TimeSpec(seconds: seconds, nanoseconds: nanoseconds)
        }
        guard let monotonic = values["monotonic"], let boottime = values["boottime"] else { return nil }
        self.init(monotonic: monotonic, boottime: boottime)
    }
}

/// Time namespaces for a husk (Docs/restore.md, *Time namespace*).
extension Kernel {
    /// The offsets of the time namespace that the calling thread's children are born in
    /// (`/proc/TID/timens_offsets`: through `/proc/PID` the file would name the main thread's).
    package static func childTimeNamespaceOffsets() throws(Errno) -> TimeNamespaceOffsets {
        let text = String(decoding: try readFile("/proc/\(currentThreadID())/timens_offsets"), as: UTF8.self)
        guard let offsets = TimeNamespaceOffsets(parsing: text) else { throw .invalidArgument }
        return offsets
    }

    /// Makes the calling thread's *future children* start in a new time namespace whose
    /// `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` read `monotonic` and `boottime` now, and run on
    /// from there. Returns the offsets written.
    ///
    /// `unshare(CLONE_NEWTIME)` changes only the namespace of the thread's children; the offsets
    /// are written to `/proc/TID/timens_offsets` before any child exists (the kernel freezes them
    /// when the first process enters). `clone3(CLONE_NEWTIME)` would freeze them at once, with the
    /// parent's values. There is no way back: `setns` into a time namespace needs a
    /// single-threaded process (`EUSERS`), so call this only on a thread whose children are husks.
    /// The corresponding system calls are `unshare` and `write`.
    package static func newTimeNamespaceForChildren(monotonic: TimeSpec, boottime: TimeSpec) throws(Errno) -> TimeNamespaceOffsets {
        // A new namespace's offsets are absolute: the kernel's clock = this thread's − its offset.
        let own = try childTimeNamespaceOffsets()
        let nowMonotonic = try clockNow(ClockID.monotonic), nowBoottime = try clockNow(ClockID.boottime)
        let offsets = TimeNamespaceOffsets(
            monotonic: TimeSpec(totalNanoseconds: own.monotonic.totalNanoseconds + monotonic.totalNanoseconds - nowMonotonic.totalNanoseconds),
            boottime: TimeSpec(totalNanoseconds: own.boottime.totalNanoseconds + boottime.totalNanoseconds - nowBoottime.totalNanoseconds))
        try check { mitosis_syscall6(Int(SYS_unshare), Int(mitosisCloneNewTime), 0, 0, 0, 0, 0) }
        let text = "monotonic \(offsets.monotonic.seconds) \(offsets.monotonic.nanoseconds)\n"
            + "boottime \(offsets.boottime.seconds) \(offsets.boottime.nanoseconds)\n"
        let file = try check { open("/proc/\(currentThreadID())/timens_offsets", O_WRONLY | O_CLOEXEC) }
        defer { _ = Glibc.close(file) }
        let bytes = Array(text.utf8)
        let written = try check { bytes.withUnsafeBytes { Glibc.write(file, $0.baseAddress, $0.count) } }
        guard written == bytes.count else { throw .ioError }
        return offsets
    }
}

/// `CLONE_NEWTIME` (linux/sched.h; missing from Debian 12's glibc headers as a Swift constant).
private let mitosisCloneNewTime: Int32 = 0x80

/// Where a husk is born when not in Mitosis's own namespaces: another network namespace (a
/// second "host"), a new time namespace whose clocks continue from a checkpoint's.
package struct HuskPlacement: Sendable {
    /// An open network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`): the husk, and
    /// every socket created in it, live there. Owned by the caller.
    package var networkNamespace: FileDescriptor?
    /// The values `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` should read in the husk when it is born.
    package var clocks: (monotonic: TimeSpec, boottime: TimeSpec)?

    package init(networkNamespace: FileDescriptor? = nil, clocks: (monotonic: TimeSpec, boottime: TimeSpec)? = nil) {
        self.networkNamespace = networkNamespace
        self.clocks = clocks
    }

    /// A namespace step that failed, told apart from the `Errno` of `clone3` (`EEXIST`: pid taken).
    package enum Failure: Error, CustomStringConvertible {
        case timeNamespace(Errno)
        case networkNamespace(Errno)
        package var description: String {
            switch self {
            case .timeNamespace(let errno): return "creating its time namespace (unshare, /proc/TID/timens_offsets): \(errno)"
            case .networkNamespace(let errno): return "entering its network namespace (setns): \(errno)"
            }
        }
    }
}

extension Kernel {
    /// Runs `spawn`, which creates a husk as the calling thread's child, with the thread set up
    /// so that the child is born where `placement` says: in a new time namespace (for good: see
    /// `newTimeNamespaceForChildren`), and inside the network namespace, which the thread joins
    /// only for the call (`setns`, then back to its own). Returns the time namespace's offsets.
    package static func spawn<T>(_ placement: HuskPlacement, _ spawn: () throws(Errno) -> T) throws -> (T, TimeNamespaceOffsets?) {
        var offsets: TimeNamespaceOffsets?
        if let clocks = placement.clocks {
            do { offsets = try newTimeNamespaceForChildren(monotonic: clocks.monotonic, boottime: clocks.boottime) } catch {
                throw HuskPlacement.Failure.timeNamespace(error)
            }
        }
        guard let target = placement.networkNamespace else { return (try spawn(), offsets) }
        let own: FileDescriptor
        do {
            own = try openReadOnly("/proc/thread-self/ns/net")
            try enterNamespace(target, type: MITOSIS_CLONE_NEWNET)
        } catch {
            throw HuskPlacement.Failure.networkNamespace(error)
        }
        defer {
            _ = try? enterNamespace(own, type: MITOSIS_CLONE_NEWNET)
            closeDescriptor(own)
        }
        return (try spawn(), offsets)
    }

    /// The kind of namespace behind an open nsfs file (a `CLONE_NEW*` flag): `ENOTTY` when it
    /// is not one. The corresponding system call is `ioctl(NS_GET_NSTYPE)`.
    package static func namespaceType(_ namespace: FileDescriptor) throws(Errno) -> Int32 {
        try check { ioctl(namespace.rawValue, 0xb703 /* NS_GET_NSTYPE = _IO(0xb7, 3) */) }
    }

    /// `CLONE_NEWNET`, the type `namespaceType` answers for a network namespace.
    package static let networkNamespaceType = MITOSIS_CLONE_NEWNET
}
