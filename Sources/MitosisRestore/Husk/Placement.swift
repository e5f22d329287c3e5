import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// When a restored process gets a time namespace of its own (`Restorer.timeNamespace`).
public enum TimeNamespaceChoice: String, Sendable, Codable, CaseIterable {
    /// When its clocks would otherwise jump: `CLOCK_MONOTONIC` or `CLOCK_BOOTTIME` here differs
    /// from the image's by more than `TimeNamespaceChoice.tolerance` beyond the real time that passed
    /// (another host, another boot, a process that had a time namespace already).
    case auto
    /// Always (an image that records no clocks is then refused).
    case on
    /// Never: the process reads this host's clocks.
    case off

    /// How far the clocks may be off the real time that passed before `auto` turns the namespace
    /// on: well above what NTP's slewing moves, well below a jump a timer would notice.
    public static let tolerance: Duration = .seconds(1)
}

/// A restored process's time namespace: the offsets its clocks read from this kernel's, and why.
public struct RestoredTimeNamespace: Codable, Sendable, Equatable {
    public var monotonicOffset: TimeSpec
    public var boottimeOffset: TimeSpec
    /// How far the process's `CLOCK_MONOTONIC` would have jumped without it, beyond the real
    /// time that passed between the checkpoint and the restore (seconds).
    public var monotonicJumpSeconds: Double
}

/// Where the husk is born: the network namespace (`--netns`) and the time namespace (`--timens`).
struct HuskPlacementPlan {
    /// The network namespace's path, as given or `/run/netns/NAME`.
    var networkNamespacePath: String?
    /// The clocks the process's time namespace continues from; nil: none of its own.
    var clocks: RestoreRecord.Clocks?
    var monotonicJump: Duration = .zero

    /// `/run/netns/NAME` for a name (what `ip netns add NAME` creates), the path itself otherwise.
    static func networkNamespacePath(_ given: String) -> String {
        given.contains("/") ? given : "/run/netns/" + given
    }

    /// Opens the network namespace and checks that it is one: before anything is created.
    static func openNetworkNamespace(_ given: String) throws(RestoreError) -> FileDescriptor {
        let path = networkNamespacePath(given)
        let namespace: FileDescriptor
        do { namespace = try Kernel.openReadOnly(path) } catch {
            throw RestoreError.noNetworkNamespace(given, detail: given.contains("/") ? "\(path): \(error)" : "no \(path) (ip netns add \(given) makes one)")
        }
        guard (try? Kernel.namespaceType(namespace)) == Kernel.networkNamespaceType else {
            Kernel.closeDescriptor(namespace)
            throw RestoreError.noNetworkNamespace(given, detail: "\(path) is not a network namespace file")
        }
        return namespace
    }

    /// Whether the process gets a time namespace: see `TimeNamespaceChoice`. The jump is how
    /// far its monotonic clock would move here beyond the real time since the checkpoint.
    static func clocks(_ record: RestoreRecord, choice: TimeNamespaceChoice) throws(RestoreError) -> (RestoreRecord.Clocks?, Duration) {
        guard choice != .off else { return (nil, .zero) }
        guard let clocks = record.clocks else {
            if choice == .on { throw RestoreError.failed(step: "placing the process in a time namespace", detail: "the image records no clocks (taken before they were recorded)") }
            return (nil, .zero)
        }
        guard let now = try? (Kernel.clockNow(ClockID.realtime), Kernel.clockNow(ClockID.monotonic), Kernel.clockNow(ClockID.boottime)) else {
            return (choice == .on ? clocks : nil, .zero)
        }
        let elapsed = now.0.totalNanoseconds - clocks.realtime.totalNanoseconds
        let monotonicJump = now.1.totalNanoseconds - clocks.monotonic.totalNanoseconds - elapsed
        let boottimeJump = now.2.totalNanoseconds - clocks.boottime.totalNanoseconds - elapsed
        let tolerance = TimeNamespaceChoice.tolerance.components.seconds * 1_000_000_000
        let jumps = choice == .on || abs(monotonicJump) > tolerance || abs(boottimeJump) > tolerance
        return (jumps ? clocks : nil, .nanoseconds(monotonicJump))
    }
}

/// Where a restore puts its first husk, decided and checked before anything exists: the network
/// namespace (opened, and checked to be one) and the clocks of a time namespace of its own. One
/// process and a tree's root go through it alike (a tree's other members are born inside their
/// parents, in the same namespaces).
struct RestorePlacement {
    /// The network namespace as given (a name or a path), its path for `nft`, its open file.
    let networkNamespace: (given: String, path: String, file: FileDescriptor)?
    /// The clocks the process's time namespace continues from; nil: none of its own.
    let clocks: RestoreRecord.Clocks?
    let monotonicJump: Duration

    init(networkNamespace given: String?, record: RestoreRecord, timeNamespace choice: TimeNamespaceChoice) throws(RestoreError) {
        let file = try given.map { given throws(RestoreError) in try HuskPlacementPlan.openNetworkNamespace(given) }
        networkNamespace = given.map { ($0, HuskPlacementPlan.networkNamespacePath($0), file!) }
        do {
            (clocks, monotonicJump) = try HuskPlacementPlan.clocks(record, choice: choice)
        } catch {
            file.map { Kernel.closeDescriptor($0) }
            throw error
        }
    }

    var husk: HuskPlacement { HuskPlacement(networkNamespace: networkNamespace?.file, clocks: clocks.map { ($0.monotonic, $0.boottime) }) }

    /// Closes the network namespace file (the husk, once born, holds its namespace itself).
    func close() { networkNamespace.map { Kernel.closeDescriptor($0.file) } }

    /// What the restore reports of the husk's time namespace, from the offsets it was born with.
    func timeNamespace(_ offsets: TimeNamespaceOffsets?) -> RestoredTimeNamespace? {
        offsets.map {
            RestoredTimeNamespace(monotonicOffset: $0.monotonic, boottimeOffset: $0.boottime,
                                  monotonicJumpSeconds: Double(monotonicJump.components.seconds)
                                      + Double(monotonicJump.components.attoseconds) / 1e18)
        }
    }

    /// Creates the husk with `pid` where this placement says, inside a new pid namespace under
    /// its init when asked: each failure one `RestoreError` (a taken pid names its holder).
    func spawnHusk(pid: Int32, inNewPidNamespace: Bool) async throws(RestoreError) -> PlacedHusk {
        let placement = husk
        do {
            if inNewPidNamespace {
                let spawned = try await Tracer.spawnHuskInNewPidNamespace(pid: pid, placement: placement)
                return PlacedHusk(tracer: spawned.tracer, namespace: (spawned.initPid, spawned.control), offsets: spawned.offsets)
            }
            let (tracer, offsets) = try await Tracer.spawnHusk(pid: pid, placement: placement)
            return PlacedHusk(tracer: tracer, namespace: nil, offsets: offsets)
        } catch Errno.fileExists {
            throw RestoreError.pidTaken(pid, holder: Restorer.describeHolder(pid))
        } catch Errno.invalidArgument {
            throw RestoreError.pidOutOfRange(pid)
        } catch let error as HuskPlacement.Failure {
            throw RestoreError.failed(step: "creating the husk with pid \(pid)", detail: "\(error)")
        } catch let error as Errno {
            throw RestoreError.failed(step: "creating the husk with pid \(pid) (clone3 with set_tid)", detail: "\(error)")
        } catch {
            throw RestoreError.failed(step: "creating the husk with pid \(pid)", detail: "\(error)")
        }
    }
}

/// A restore's first husk, and the init of its new pid namespace when it has one.
struct PlacedHusk {
    let tracer: Tracer
    /// The init (pid 1 there, this process's child) and its control pipe: closing the pipe lets
    /// the init reap what is left and end with its last child.
    let namespace: (initPid: Int32, control: FileDescriptor)?
    let offsets: TimeNamespaceOffsets?

    /// Lets the namespace's init go: it ends once the restored processes have.
    func releaseNamespace() { try? namespace?.control.close() }

    /// For a restore that failed: the init, told to end, is reaped (the husks are killed first).
    func endNamespace() {
        guard let namespace else { return }
        try? namespace.control.close()
        Kernel.reap(namespace.initPid)
    }
}
