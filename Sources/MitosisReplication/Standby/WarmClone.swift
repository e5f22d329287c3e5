import Foundation
import Logging
import MitosisImage
import MitosisKernel
import MitosisRestore

/// How a standby keeps a warm clone.
public struct WarmOptions: Sendable {
    /// Prepare the husk inside a new pid namespace, where the process's pid is free even when
    /// it is taken on this host (two "hosts" sharing one kernel, as in the tests). Promotion then
    /// brings the process to life there (Docs/restore.md, `--pidns`).
    public var pidNamespace = false
    /// After a failed preparation (the pid taken, an image not restorable), the next try waits
    /// for a commit at least this much later.
    public var retryInterval: Duration = .seconds(5)

    public init(pidNamespace: Bool = false) {
        self.pidNamespace = pidNamespace
    }
}

/// The husk a warm clone keeps: of one process, or of a process tree (`protect --tree`).
enum WarmHusk: Sendable {
    case process(PreparedProcess)
    case tree(PreparedTree)

    /// The process's pid (a tree's root's), inside its pid namespace, and as this host sees it.
    var pid: Int32 {
        switch self {
        case .process(let husk): husk.pid
        case .tree(let husk): husk.root
        }
    }

    var hostPid: Int32 {
        switch self {
        case .process(let husk): husk.hostPid
        case .tree(let husk): husk.rootHostPid
        }
    }

    func discard() async {
        switch self {
        case .process(let husk): await husk.discard()
        case .tree(let husk): await husk.discard()
        }
    }
}

/// What the warm clone holds now.
public struct WarmStatus: Codable, Sendable, Equatable {
    /// The epoch whose memory the husk holds; nil when there is no husk.
    public var epoch: Epoch?
    /// The process's pid, and the husk's pid on this host (they differ in a new pid namespace).
    public var pid: Int32?
    public var hostPid: Int32?
    /// Why there is no husk, when there is none.
    public var reason: String?
    /// Husks built (the first and every rebuild) and epochs applied so far.
    public var builds = 0
    public var updates = 0
}

/// The standby's warm clone (Docs/replication.md, "Warm clone"): once an epoch is committed, a
/// husk of the process prepared from it (`Restorer.prepare`: the address space only, nothing
/// visible outside), then every later committed epoch applied to it (`PreparedProcess.update`),
/// so that promotion only has to finish the restore. An epoch the husk cannot take is logged and
/// the husk rebuilt from the chain. A tree epoch gets a prepared tree (`TreeRestorer.prepare`,
/// `PreparedTree.update`) the same way.
///
/// The husk is traced by its tracer's thread with `PTRACE_O_EXITKILL`: if the standby dies, the
/// kernel kills it, so a warm clone never outlives its standby. Operations run one at a time, in
/// the order they were asked for (an actor alone would interleave them at each `await`).
actor WarmClone {
    private let options: WarmOptions
    private let logger: Logger
    /// Where the data files' copies live (`DataFileCopies`).
    private let filesDirectory: String
    private var prepared: WarmHusk?
    private var applied: Epoch?
    /// The data files as of `applied` (nil: promotion reads them from the chain).
    private var files: DataFileCopies?
    private var status = WarmStatus(reason: "no epoch committed yet")
    private var lastFailure: (reason: String, at: ContinuousClock.Instant)?
    private var busy = false
    /// Promoted or stopped: later commits build nothing.
    private var closed = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(options: WarmOptions, filesDirectory: String, logger: Logger) {
        self.options = options
        self.filesDirectory = filesDirectory
        self.logger = logger
    }

    func currentStatus() -> WarmStatus { status }

    /// `epoch` was committed (its image `image`, or read from `path` when nil): the husk is
    /// brought to it, or built from it. Older epochs than the husk's are ignored.
    func committed(_ epoch: Epoch, image: CheckpointImage?, path: String) async {
        await serialized {
            guard !closed, applied.map({ epoch > $0 }) ?? true else { return }
            await bring(to: epoch, image: image, path: path)
        }
    }

    /// Hands the husk over for promotion, holding `epoch` (applied now if it is not yet), or
    /// nil with the reason there is none (a husk is not built at this point: that would be a
    /// cold restore by another name). Afterwards the warm clone holds nothing and builds nothing.
    func take(at epoch: Epoch, path: String) async -> (husk: WarmHusk?, files: DataFileCopies?, reason: String?) {
        await serialized {
            closed = true
            if prepared != nil && applied != epoch { await bring(to: epoch, image: nil, path: path) }
            guard let husk = prepared, applied == epoch else {
                return (nil, nil, status.reason ?? "the warm clone does not hold epoch \(epoch)")
            }
            defer { (prepared, applied, files) = (nil, nil, nil) }
            status = WarmStatus(reason: "promoted", builds: status.builds, updates: status.updates)
            return (husk, files, nil)
        }
    }

    /// Kills the husk, if any (the standby stops).
    func discard() async {
        await serialized {
            closed = true
            await prepared?.discard()
            prepared = nil
            applied = nil
            await discardFiles()
            status.epoch = nil
            status.reason = "the standby stopped"
        }
    }

    // MARK: -

    private func bring(to epoch: Epoch, image given: CheckpointImage?, path: String) async {
        if given == nil, TreeImage.isTree(path) {
            await bringTree(to: epoch, path: path)
            return
        }
        if case .tree = prepared { await dropHusk() }
        let image: CheckpointImage
        do {
            image = try await Blocking.run("mitosis-warm-open") { try given ?? CheckpointImage.open(path) }
        } catch {
            failed("epoch \(epoch) does not open: \(error)")
            return
        }
        if case .process(let husk) = prepared {
            do {
                let report = try await husk.update(to: image)
                await recordApplied(epoch, imageDirectory: image.path)
                logger.debug("warm clone: epoch \(epoch) applied in \(String(format: "%.2f", report.milliseconds)) ms: \(report.pagesWritten) pages written, \(report.pagesDiscarded) discarded, mappings +\(report.mappingsCreated) -\(report.mappingsRemoved) ~\(report.mappingsChanged)")
                return
            } catch {
                guard await rebuildAfter(epoch, error) else { return }
            }
        } else if let last = lastFailure, ContinuousClock.now - last.at < options.retryInterval {
            return
        }
        let clock = ContinuousClock(), started = clock.now
        do {
            let restorer = try Restorer(image: image)
            if let refusal = restorer.preparationRefusals().first { throw RestoreError.refused(image: image.path, [refusal]) }
            let husk = try await restorer.prepare(inNewPidNamespace: options.pidNamespace)
            await built(.process(husk), epoch: epoch, files: { [chain = restorer.chain] in try FileDeltaLog.materialize(chain) }, took: clock.now - started)
        } catch {
            failed("\(error)")
        }
    }

    /// `bring` for a tree epoch: the prepared tree updated to it, or prepared from it.
    private func bringTree(to epoch: Epoch, path: String) async {
        if case .process = prepared { await dropHusk() }
        let tree: TreeImage
        do {
            tree = try await Blocking.run("mitosis-warm-open") { try TreeImage.open(path) }
        } catch {
            failed("tree epoch \(epoch) does not open: \(error)")
            return
        }
        if case .tree(let husk) = prepared {
            do {
                let reports = try await husk.update(to: tree)
                await recordApplied(epoch, imageDirectory: tree.path)
                logger.debug("warm clone: tree epoch \(epoch) applied in \(String(format: "%.2f", reports.map(\.milliseconds).reduce(0, +))) ms: \(reports.map(\.pagesWritten).reduce(0, +)) pages written")
                return
            } catch {
                guard await rebuildAfter(epoch, error) else { return }
            }
        } else if let last = lastFailure, ContinuousClock.now - last.at < options.retryInterval {
            return
        }
        let clock = ContinuousClock(), started = clock.now
        do {
            let restorer = try TreeRestorer(image: tree)
            if let refusal = restorer.preparationRefusals().first { throw RestoreError.refused(image: tree.path, [refusal]) }
            let husk = try await restorer.prepare(inNewPidNamespace: options.pidNamespace)
            await built(.tree(husk), epoch: epoch, files: { try FileDeltaLog.materialize(tree) }, took: clock.now - started)
        } catch {
            failed("\(error)")
        }
    }

    /// The husk took `epoch`; so do the data files' copies (`imageDirectory` holds its `files.log`).
    private func recordApplied(_ epoch: Epoch, imageDirectory: String) async {
        applied = epoch
        if let copies = files {
            do { try await Blocking.run("mitosis-warm-files") { try copies.apply(imageDirectory: imageDirectory) } } catch {
                await discardFiles()
                logger.warning("warm clone: the data files of epoch \(epoch) do not apply (\(error)); promotion will read them from the chain")
            }
        }
        status.epoch = epoch
        status.updates += 1
    }

    /// An update failed and killed the husk: true when a new one is to be built from the
    /// epoch (not at promotion).
    private func rebuildAfter(_ epoch: Epoch, _ error: any Error) async -> Bool {
        prepared = nil
        applied = nil
        await discardFiles()
        guard !closed else {
            failed("epoch \(epoch) could not be applied to the husk: \(error)")
            return false
        }
        logger.warning("warm clone: epoch \(epoch) cannot be applied to the husk (\(error)); rebuilding it from the chain")
        return true
    }

    /// A husk was prepared from `epoch`: it is kept, with copies of the data files as of the
    /// epoch (`files`).
    private func built(_ husk: WarmHusk, epoch: Epoch, files materialize: @escaping @Sendable () throws -> [String: MaterializedFile],
                       took: Duration) async {
        prepared = husk
        applied = epoch
        do {
            files = try await Blocking.run("mitosis-warm-files") { [filesDirectory] in
                try DataFileCopies(directory: filesDirectory, files: try materialize())
            }
        } catch {
            logger.warning("warm clone: no copies of the data files (\(error)); promotion will read them from the chain")
        }
        lastFailure = nil
        status = WarmStatus(epoch: epoch, pid: husk.pid, hostPid: husk.hostPid, reason: nil, builds: status.builds + 1, updates: status.updates)
        let here = husk.hostPid == husk.pid ? "" : " (pid \(husk.hostPid) here, in a new pid namespace)"
        let what = if case .tree(let tree) = husk { "tree of \(tree.hostPids.count) process(es), root process \(husk.pid)" } else { "process \(husk.pid)" }
        logger.info("warm clone: husk of \(what)\(here) prepared from epoch \(epoch) in \(took)")
    }

    /// Kills the husk of another kind than the epoch's, with its data files' copies.
    private func dropHusk() async {
        await prepared?.discard()
        (prepared, applied) = (nil, nil)
        await discardFiles()
    }

    private func failed(_ reason: String) {
        status.epoch = nil
        status.pid = nil
        status.hostPid = nil
        status.reason = reason
        if lastFailure?.reason != reason { logger.warning("warm clone: none (\(reason)); promotion would restore cold") }
        lastFailure = (reason, ContinuousClock.now)
    }

    /// Runs `body` once every operation asked for before it has ended.
    private func serialized<T: Sendable>(_ body: () async -> T) async -> T {
        while busy { await withCheckedContinuation { waiting.append($0) } }
        busy = true
        defer {
            busy = false
            if !waiting.isEmpty { waiting.removeFirst().resume() }
        }
        return await body()
    }

    private func discardFiles() async {
        guard let copies = files else { return }
        files = nil
        _ = try? await Blocking.run("mitosis-warm-files") { copies.discard() }
    }
}
