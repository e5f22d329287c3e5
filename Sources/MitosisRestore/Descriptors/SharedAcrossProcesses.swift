import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// What the other members of a tree hold, for the refusals of one member: a pipe end or a
/// socket peer held by another member is inside the tree, not outside.
struct TreeHoldings: Sendable {
    /// Pipe ends (access mode 0 read, 1 write) held by any member, by pipe inode.
    var pipeEnds: [UInt64: Set<UInt32>] = [:]
    var pipeContents: [UInt64: RestoreRecord.PipeContents] = [:]
    /// Every member's sockets, by inode.
    var sockets: [UInt64: SocketRestoreState] = [:]
}

/// One member's part in a tree restore: which of its descriptors an earlier member creates (it
/// takes them, `imports`), and which it creates for later members (`exports`). Keys name one
/// open file description across the tree: `pipe:INODE:r` / `pipe:INODE:w` (a pipe end),
/// `socket:INODE` (a socket has one description), `file:PID:FD` (a description kcmp found
/// shared, named by its first holder).
struct TreeLinks: Sendable {
    let pool: DescriptionPool
    /// Descriptor number → the key of the description an earlier member created.
    var imports: [Int32: String] = [:]
    /// Keys this member creates and later members take.
    var exports: Set<String> = []
    /// Descriptors of the other members: the far end of a pipe or socketpair this member
    /// creates for both.
    var foreign: [OpenDescriptor] = []
    var foreignSockets: [UInt64: SocketRestoreState] = [:]
    /// Anonymous shared mappings (by start) that map an object an earlier member created: its
    /// pid and that mapping's range there.
    var sharedMemory: [UInt64: (owner: Int32, start: UInt64, end: UInt64)] = [:]

    static func pipeKey(_ inode: UInt64, write: Bool) -> String { "pipe:\(inode):\(write ? "w" : "r")" }
    static func socketKey(_ inode: UInt64) -> String { "socket:\(inode)" }
    static func fileKey(_ pid: Int32, _ fd: Int32) -> String { "file:\(pid):\(fd)" }
}

/// Open file descriptions created in one husk for another, held by Mitosis in between
/// (`pidfd_getfd` from the creator; the taker gets it by an injected `pidfd_getfd` of Mitosis's
/// copy). Used from the tree's one tracer thread; closed once the tree is restored or killed.
///
/// Inside a new pid namespace Mitosis has no pid a husk could `pidfd_open`: the husk opens
/// instead Mitosis's own pidfd through this host's `/proc/MITOSIS/fd/N` (the husk shares
/// Mitosis's mount namespace, whose `/proc` shows this host's pids), which pidfs (Linux 6.9+)
/// lets open as a pidfd again.
final class DescriptionPool: @unchecked Sendable {
    private var held: [String: FileDescriptor] = [:]
    private let lock = NSLock()
    /// Mitosis's own pidfd, for husks in a new pid namespace; nil outside one.
    let ownPidfd: FileDescriptor?

    init(forNewPidNamespace: Bool = false) throws {
        ownPidfd = forNewPidNamespace ? try Kernel.pidfdOpen(Kernel.currentProcessID()) : nil
    }

    /// Keeps a copy of descriptor `fd` of process `pid` under `key`.
    func take(_ key: String, from pid: Int32, fd: Int32) throws {
        let pidfd = try Kernel.pidfdOpen(pid)
        defer { try? pidfd.close() }
        let copy = try Kernel.pidfdGetfd(pidfd, fd)
        lock.withLock {
            if let old = held[key] { try? old.close() }
            held[key] = copy
        }
    }

    func descriptor(_ key: String) -> FileDescriptor? { lock.withLock { held[key] } }

    func close() {
        lock.withLock {
            for fd in held.values { try? fd.close() }
            held.removeAll()
        }
        try? ownPidfd?.close()
    }
}

extension Tracer {
    /// Takes the description `key` from Mitosis's pool into the husk: injected `pidfd_open` of
    /// Mitosis and `pidfd_getfd` of its copy. Returns the husk's new descriptor.
    func importDescription(_ key: String, for fd: Int32, pool: DescriptionPool, area: WorkArea) throws -> UInt64 {
        let step = "taking fd \(fd) (\(key)) from the member that created it"
        guard let local = pool.descriptor(key) else { throw StepFailure(step: step, detail: "no member created it") }
        let pidfd: UInt64
        if let own = pool.ownPidfd {
            let path = "/proc/\(Kernel.currentProcessID())/fd/\(own.rawValue)"
            pidfd = try huskCall(step + ": opening Mitosis's pidfd at \(path) (a pidfd opened again through /proc needs pidfs, Linux 6.9+)", SyscallNumber.openat,
                                 [UInt64(bitPattern: -100), try huskText(path, area: area), UInt64(Linux.O_RDONLY | Linux.O_CLOEXEC), 0])
        } else {
            pidfd = try huskCall(step + ": pidfd_open", SyscallNumber.pidfd_open, [UInt64(Kernel.currentProcessID()), 0])
        }
        let taken = Result { try huskCall(step + ": pidfd_getfd", SyscallNumber.pidfd_getfd, [pidfd, UInt64(local.rawValue), 0]) }
        try huskCall(step + ": close", SyscallNumber.close, [pidfd])
        return try taken.get()
    }

    /// Puts what later members take into the pool: each exported key from the descriptor (or
    /// parked end) that holds it here.
    func exportDescriptions(_ links: TreeLinks, descriptors: [OpenDescriptor], parkedPipes: [PipeEnd: UInt64],
                            parkedPairs: [UInt64: UInt64]) throws {
        for key in links.exports.sorted() {
            let parts = key.split(separator: ":")
            var fd: Int32?
            if parts.count == 3, parts[0] == "pipe", let inode = UInt64(parts[1]) {
                fd = parkedPipes[PipeEnd(inode: inode, write: parts[2] == "w")].map { Int32($0) }
            } else if parts.count == 2, parts[0] == "socket", let inode = UInt64(parts[1]) {
                fd = parkedPairs[inode].map { Int32($0) } ?? descriptors.first { $0.inode == inode && $0.kind == .socket }?.fd
            } else if parts.count == 3, parts[0] == "file" {
                fd = Int32(parts[2])
            }
            guard let fd else { throw StepFailure(step: "handing \(key) to another member", detail: "this process does not hold it") }
            do { try links.pool.take(key, from: pid, fd: fd) } catch {
                throw StepFailure(step: "handing \(key) (fd \(fd)) to another member", detail: "\(error)")
            }
        }
    }
}
