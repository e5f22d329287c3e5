import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// A restored process, and what its restore cost.
public struct RestoreResult: Codable, Sendable, Equatable {
    public var pid: Int32
    public var threads: Int
    public var descriptors: Int
    /// From the start of `restore` until the process runs, image reading included.
    public var restoreMilliseconds: Double
    /// Restored inside a new pid namespace: the process's pid as this host sees it (`pid` is
    /// its pid inside), and the namespace's init (pid 1 there, a child of the restoring
    /// thread; it exits once the restored process has).
    public var hostPid: Int32?
    public var namespaceInitPid: Int32?
    /// Time per phase: `husk` (creating it), `empty` (emptying its address space, placing the
    /// vDSO), `memory` (mapping and filling), `state` (signals, mm, descriptors, threads),
    /// `resume` (rseq, registers, detach).
    public var phases: [String: Double]
    /// The network namespace it was restored into (`--netns`), as given; nil: Mitosis's own.
    public var networkNamespace: String?
    /// Its time namespace, when it got one (`--timens`); nil: it reads this host's clocks.
    public var timeNamespace: RestoredTimeNamespace?
    /// What was restored otherwise than recorded, and why (a process group that no longer
    /// exists, a parent-death signal not armed…); empty when everything is as recorded.
    public var notes: [String] = []
}

/// Brings a checkpointed process back to life from an image chain, on this host, with its pid
/// and thread ids (see Docs/restore.md).
///
/// A husk — an empty process with the image's pid, created by `clone3(set_tid)` and traced with
/// `PTRACE_O_EXITKILL` — is filled entirely by system calls injected into it: its address space
/// emptied, the vDSO placed, every mapping created and filled (`prepare`), then signal
/// dispositions, mm bounds, descriptors and threads set, registers put back (`finish`). Then it
/// is detached and runs on. A restore that fails at any step kills its husk: no process is left
/// behind.
public struct Restorer: Sendable {
    public let image: CheckpointImage
    public let chain: CheckpointChain
    /// Lock the image's established TCP connections from before their sockets exist until the
    /// process runs (`NetworkLock`): without it, a peer's packet meeting no socket is answered
    /// with a reset. The lock `dump --kill` left is lifted either way.
    public var networkLock = true
    /// The network namespace to restore into, a second "host": a name (`/run/netns/NAME`, as
    /// `ip netns add` makes) or the path of any network namespace file. The husk joins it before
    /// any socket exists, and the network lock is taken there. Nil: Mitosis's own.
    public var networkNamespace: String?
    /// When the process gets a time namespace whose `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`
    /// continue from the checkpoint's (see `TimeNamespaceChoice`, Docs/restore.md).
    public var timeNamespace = TimeNamespaceChoice.auto

    /// Opens the chain of `image` (every ancestor, checked by id).
    public init(image: CheckpointImage) throws(ImageError) {
        self.image = image
        chain = try image.chain()
    }

    public var manifest: CheckpointManifest { image.manifest }

    /// Every reason the image cannot be restored on this host now (empty when it can): version,
    /// vDSO, missing files, descriptor kinds and mappings not restorable yet, and so on.
    public func refusals() -> [RestoreRefusal] {
        RestorePlan.refusals(manifest)
    }

    /// Why the image cannot be prepared ahead of its restore (a warm clone): filling a shared
    /// writable file mapping writes its file, and SysV segments would be created, something
    /// outside the husk would see.
    public func preparationRefusals() -> [RestoreRefusal] {
        RestorePlan.preparationProblems(manifest)
    }

    /// The same reasons from a manifest alone, without opening its chain (which `init` reads
    /// whole): a standby checks its newest epoch this way after commits.
    public static func refusals(of manifest: CheckpointManifest) -> [RestoreRefusal] {
        RestorePlan.refusals(manifest)
    }

    /// Waits until the `nft` processes of the network locks restores lifted have ended (at most
    /// `timeout`). A restore returns as soon as its lock's rules are out of force; the lock's
    /// emptied table goes with its `nft` a little later. A program that exits after restoring
    /// calls this first, so that no table outlives it.
    public static func awaitLiftedLocks(timeout: Duration = .seconds(5)) async {
        try? await Blocking.run("mitosis-network-unlock") { NetworkLock.awaitEnds(timeout: timeout) }
    }

    /// Restores the process. `verify`, if given, runs once the process is complete but before
    /// any of its threads runs (its memory can be read with `process_vm_readv`; it gets the
    /// pid this host sees); throwing from it aborts the restore and kills the process.
    ///
    /// With `inNewPidNamespace`, the process is restored inside a new pid namespace, under a
    /// small init that is pid 1 there (so its pid may be taken here); see Docs/restore.md.
    /// The same as `prepare` then `PreparedProcess.finish`.
    public func restore(inNewPidNamespace: Bool = false, verify: (@Sendable (Int32) throws -> Void)? = nil) async throws -> RestoreResult {
        let clock = ContinuousClock()
        let started = clock.now
        do {
            let prepared = try await prepare(inNewPidNamespace: inNewPidNamespace)
            var result = try await prepared.finish(verify: verify)
            result.restoreMilliseconds = (clock.now - started).inMilliseconds
            return result
        } catch {
            // A restore that fails lifts the lock `dump --kill` left (wherever it failed): its
            // clients then see a reset rather than a connection hanging for ever.
            if let held = manifest.restore?.networkLockTable {
                let namespace = networkNamespace.map(HuskPlacementPlan.networkNamespacePath)
                try? await Blocking.run("mitosis-network-lock") { try NetworkLock.remove(held, namespacePath: namespace) }
            }
            throw error
        }
    }

    /// Restores the process up to its address space only (phases 1–2, Husk/HuskBuild.swift):
    /// a husk with the image's pid holding its memory, frozen under ptrace, with nothing visible
    /// outside it (no descriptor, socket, thread or file write). `PreparedProcess.update` brings
    /// it to a newer image of the same process, `finish` completes the restore.
    public func prepare(inNewPidNamespace: Bool = false) async throws -> PreparedProcess {
        let clock = ContinuousClock()
        let started = clock.now
        let refusals = self.refusals()
        guard refusals.isEmpty, let record = manifest.restore else { throw RestoreError.refused(image: image.path, refusals) }
        var plan = RestorePlan(manifest: manifest, record: record)
        plan.newPidNamespace = inNewPidNamespace
        let pid = manifest.pid
        // Where the husk is born, checked before anything exists.
        let placement = try RestorePlacement(networkNamespace: networkNamespace, record: record, timeNamespace: timeNamespace)
        defer { placement.close() }
        plan.timeNamespace = placement.clocks != nil
        let husk = try await placement.spawnHusk(pid: pid, inNewPidNamespace: inNewPidNamespace)
        let (tracer, namespace, offsets) = (husk.tracer, husk.namespace, husk.offsets)
        let huskReady = clock.now
        var segments: SharedMemorySegments?
        do {
            segments = try SharedMemorySegments.prepare(record.sysvSharedMemory ?? [])
            plan.sharedMemoryFilled = segments?.filled ?? []
            var (area, phases) = try await tracer.prepareHusk(plan, chain: chain)
            phases["husk"] = (huskReady - started).inMilliseconds
            // nft started now, in the namespace the connections are restored in, for `finish`
            // (a later image of a warm clone may have connections where this one has none: its
            // finish starts nft then).
            let lockNamespace = placement.networkNamespace?.path
            let hasConnections = !(record.connections ?? []).isEmpty
            let readyLock = networkLock && hasConnections
                ? try? await Blocking.run("mitosis-network-lock") { try NetworkLock(namespacePath: lockNamespace) } : nil
            let time = placement.timeNamespace(offsets)
            return PreparedProcess(image: image, tracer: tracer, area: area, plan: plan, namespace: namespace,
                                   placement: .init(networkNamespace: placement.networkNamespace?.given, lockNamespace: lockNamespace, time: time),
                                   segments: segments, networkLock: networkLock, readyLock: readyLock, phases: phases)
        } catch {
            await tracer.killHusk()
            segments?.removeCreated()
            husk.endNamespace()
            if let failure = error as? StepFailure { throw RestoreError.failed(step: failure.step, detail: failure.detail) }
            throw RestoreError.failed(step: "restoring", detail: "\(error)")
        }
    }

    /// "process 123 (name: cmdline)" for the process holding `pid`.
    static func describeHolder(_ pid: Int32) -> String {
        let comm = (try? Kernel.readFile("/proc/\(pid)/comm")).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .newlines) }
        let cmdline = (try? Kernel.readFile("/proc/\(pid)/cmdline")).map {
            $0.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ")
        }
        guard let comm else { return "process \(pid) (or a thread of another process)" }
        let stat = (try? Kernel.readFile("/proc/\(pid)/stat")).flatMap { ProcStat(parsing: String(decoding: $0, as: UTF8.self)) }
        if stat?.state == "Z" { return "process \(pid) (\(comm), exited but not yet reaped by its parent \(stat!.ppid))" }
        return "process \(pid) (\(comm)\(cmdline.map { $0.isEmpty ? "" : ": " + $0 } ?? ""))"
    }
}
