import Foundation
import Logging
import MitosisImage
import MitosisKernel
import MitosisRestore
import SystemPackage

/// What a promotion did.
public struct PromotionResult: Codable, Sendable, Equatable {
    public var epoch: Epoch
    public var imageID: String
    public var image: String
    /// When the epoch's checkpoint started on the primary (ISO 8601), and how long before the
    /// end of the promotion that was.
    public var created: String
    public var ageMilliseconds: Double
    public var pid: Int32
    public var dataFiles: Int
    /// Taking the directory from its standby, writing the data files, the restore (for a warm
    /// clone: finishing it), all of it.
    public var stopStandbyMilliseconds: Double
    public var dataFilesMilliseconds: Double
    public var restoreMilliseconds: Double
    public var totalMilliseconds: Double
    /// Finished from the standby's warm clone; otherwise a cold restore, and `coldReason` says why.
    public var warm = false
    public var coldReason: String?
    /// The process's pid on this host when it runs in a new pid namespace (`pid` is its pid there).
    public var hostPid: Int32?
    /// The restore's own phases (`RestoreResult.phases`: a warm clone's finish has `state` and `resume` only).
    public var phases: [String: Double] = [:]
    /// Milliseconds of each step of the promotion, in order: `fence`, the control socket's round
    /// trip (`control`), `stop` (no epoch accepted any more), `take` (the warm clone handed over),
    /// `open` (the epoch's image, cold only), `files`, then `finish` (warm) or `restore` (cold).
    public var steps: [String: Double] = [:]
    /// A tree epoch (`protect --tree`): every member restored, top-down (`pid` is the root).
    public var members: [Int32]?
}

/// Brings the protected process to life on the standby from the newest committed epoch: by
/// finishing the standby's warm clone when it holds that epoch, by a cold restore otherwise
/// (Docs/replication.md, "Promotion").
///
/// First the directory is fenced (`PROMOTED`: no standby serves it again, so there is never a
/// second process from it). Then the standby serving it — in this process, or reached through
/// its control socket `DIR/control` — stops accepting epochs and promotes its process itself (a
/// tracer cannot hand its tracee over). Without one, the standby holding the lock is stopped
/// (SIGTERM, then SIGKILL: its warm clone dies with it) and the process restored cold. The
/// epoch's data files are written to their paths before the process is finished. A failure
/// leaves the fence: promoting twice would make two primaries; remove `PROMOTED` by hand to
/// serve the directory again.
public enum Promotion {
    public static func promote(directory path: String, standbyTimeout: Duration = .seconds(10),
                               logger: Logger = Logger(label: "mitosis.promote")) async throws -> PromotionResult {
        let clock = ContinuousClock(), started = clock.now
        let directory = StandbyDirectory(path)
        guard (try? Kernel.status(directory.epochsPath))?.type == .directory else { throw ReplicationError.nothingCommitted(path) }
        let fence = try await Blocking.run("mitosis-promote-fence") { try createFence(directory) }
        let fenced = clock.now
        // Synced while the process is brought to life, awaited before answering: its exclusive
        // creation is what stops a second promotion; its durability only matters across a crash
        // of this host, which the promoted process would not survive either.
        let fenceSync = Task { try await Blocking.run("mitosis-promote-fence") { try syncFence(fence, directory) } }
        var result: PromotionResult
        do {
            result = try await promoteFenced(directory, standbyTimeout: standbyTimeout, logger: logger)
        } catch {
            _ = try? await fenceSync.value
            throw error
        }
        let answered = clock.now
        do { try await fenceSync.value } catch { logger.warning("promote: syncing the fence \(directory.fencePath) failed: \(error)") }
        // The standby's figures run from its own start; the rest was the fence and the socket.
        let sync = result.steps["sync"] ?? 0
        let running = (answered - started).inMilliseconds - sync
        result.steps["fence"] = (fenced - started).inMilliseconds
        result.steps["control"] = max(0, running - result.totalMilliseconds - (fenced - started).inMilliseconds)
        result.steps["sync"] = max(sync, (clock.now - started).inMilliseconds - running)
        result.totalMilliseconds = running
        return result
    }

    /// `promote` once the directory is fenced: by the standby serving it (in this process or
    /// through its control socket), or cold after stopping whoever holds its lock.
    private static func promoteFenced(_ directory: StandbyDirectory, standbyTimeout: Duration, logger: Logger) async throws -> PromotionResult {
        let path = directory.path
        if let standby = StandbyControl.standby(serving: path) { return try await standby.promote() }
        // The standby answers once the process runs (or it failed): a warm clone that fails is
        // restored cold by the standby itself. No answer in time: nothing more is tried, since
        // the standby may still bring the process to life.
        if let reply = try await StandbyControl.request(directory, "promote", timeout: .seconds(300)) {
            guard let result = reply.result else {
                throw ReplicationError.promotion("the standby of \(path) did not promote: \(reply.error ?? "no reason given")")
            }
            return result
        }
        let clock = ContinuousClock(), started = clock.now
        // Stop and lock on a thread of their own: they wait on a lock.
        let lock = try await Blocking.run("mitosis-promote") { try stopStandbyAndLock(directory, timeout: standbyTimeout, logger: logger) }
        defer { try? lock.close() }
        let scan = directory.scan()
        for line in scan.skipped { logger.warning("promote: passing over \(line)") }
        guard let newest = scan.newest else { throw ReplicationError.nothingCommitted(path) }
        if let tree = scan.tree {
            return try await restoreTree(epoch: newest.epoch, tree: tree, husk: nil, files: nil, reason: "no standby serves \(path)",
                                         inNewPidNamespace: false, started: started, steps: ["stop": (clock.now - started).inMilliseconds], logger: logger)
        }
        return try await restore(epoch: newest.epoch, image: newest.image, husk: nil, files: nil, reason: "no standby serves \(path)",
                                 inNewPidNamespace: false, started: started, steps: ["stop": (clock.now - started).inMilliseconds], logger: logger)
    }

    /// The promotion a standby runs on its own directory, once fenced: no epoch commits after
    /// this, then its warm clone is finished (or the process restored cold).
    static func promote(servedBy standby: Standby) async throws -> PromotionResult {
        let clock = ContinuousClock(), started = clock.now
        let directory = standby.store.directory
        guard directory.isPromoted else { throw ReplicationError.promotion("\(directory.path) is not fenced: promote through Promotion.promote") }
        await standby.store.close()
        let stopped = clock.now
        standby.logger.info("standby: promoting; no epoch is accepted any more")
        guard let committed = await standby.store.committed else { throw ReplicationError.nothingCommitted(directory.path) }
        let path = directory.imagePath(committed.epoch)
        var taken: (husk: WarmHusk?, files: DataFileCopies?, reason: String?) = (nil, nil, "the standby keeps no warm clone (--warm)")
        if let warm = standby.warm { taken = await warm.take(at: committed.epoch, path: path) }
        var steps = ["stop": (stopped - started).inMilliseconds, "take": (clock.now - stopped).inMilliseconds]
        if let tree = await standby.store.committedTree {
            var (husk, held) = (PreparedTree?.none, tree)
            if case .tree(let prepared) = taken.husk { (husk, held) = (prepared, await prepared.image) }
            return try await restoreTree(epoch: committed.epoch, tree: held, husk: husk, files: taken.files,
                                         reason: taken.reason, inNewPidNamespace: standby.options.warm?.pidNamespace ?? false, started: started,
                                         steps: steps, logger: standby.logger)
        }
        var husk: PreparedProcess?
        if case .process(let prepared) = taken.husk { husk = prepared }
        let image: CheckpointImage
        if let husk {
            image = await husk.image  // the epoch the husk holds, opened when it was applied
        } else {
            let opening = clock.now
            do {
                image = try await Blocking.run("mitosis-promote-open") { try CheckpointImage.open(path) }
            } catch {
                if let files = taken.files { _ = try? await Blocking.run("mitosis-promote-files") { files.discard() } }
                throw error
            }
            steps["open"] = (clock.now - opening).inMilliseconds
        }
        return try await restore(epoch: committed.epoch, image: image, husk: husk, files: taken.files, reason: taken.reason,
                                 inNewPidNamespace: standby.options.warm?.pidNamespace ?? false, started: started, steps: steps,
                                 logger: standby.logger)
    }

    /// Brings one process back: `revive` with its warm husk or a cold `Restorer`.
    private static func restore(epoch: Epoch, image: CheckpointImage, husk: PreparedProcess?, files: DataFileCopies?, reason: String?,
                                inNewPidNamespace: Bool, started: ContinuousClock.Instant, steps: [String: Double],
                                logger: Logger) async throws -> PromotionResult {
        let revived = try await revive(files: files, materialize: { try FileDeltaLog.materialize(try image.chain()) },
                                       finish: husk.map { husk in { try await husk.finish() } }, discard: { await husk?.discard() },
                                       cold: { try await Restorer(image: image).restore(inNewPidNamespace: inNewPidNamespace) },
                                       reason: reason, steps: steps, logger: logger)
        let restored = revived.result
        let created = image.manifest.created
        return PromotionResult(epoch: epoch, imageID: image.manifest.id, image: image.path, created: created,
                               ageMilliseconds: age(created), pid: restored.pid, dataFiles: revived.written,
                               stopStandbyMilliseconds: revived.steps["stop"] ?? 0, dataFilesMilliseconds: revived.steps["files"] ?? 0,
                               restoreMilliseconds: restored.restoreMilliseconds, totalMilliseconds: (revived.finished - started).inMilliseconds,
                               warm: revived.warm, coldReason: revived.reason, hostPid: restored.hostPid, phases: restored.phases, steps: revived.steps)
    }

    /// Brings a tree back: `revive` with its prepared tree or a cold `TreeRestorer`; its data
    /// files replayed from its chain of tree epochs when there are no copies.
    private static func restoreTree(epoch: Epoch, tree: TreeImage, husk: PreparedTree?, files: DataFileCopies?, reason: String?,
                                    inNewPidNamespace: Bool, started: ContinuousClock.Instant, steps: [String: Double],
                                    logger: Logger) async throws -> PromotionResult {
        let revived = try await revive(files: files, materialize: { try FileDeltaLog.materialize(tree) },
                                       finish: husk.map { husk in { try await husk.finish() } }, discard: { await husk?.discard() },
                                       cold: { try await TreeRestorer(image: tree).restore(inNewPidNamespace: inNewPidNamespace) },
                                       reason: reason, steps: steps, logger: logger)
        let restored = revived.result, root = restored.members[0]
        // When the epoch's capture began: the root's checkpoint start.
        let created = tree.members[0].manifest.created
        return PromotionResult(epoch: epoch, imageID: tree.manifest.id, image: tree.path, created: created, ageMilliseconds: age(created),
                               pid: restored.root, dataFiles: revived.written, stopStandbyMilliseconds: revived.steps["stop"] ?? 0,
                               dataFilesMilliseconds: revived.steps["files"] ?? 0, restoreMilliseconds: restored.restoreMilliseconds,
                               totalMilliseconds: (revived.finished - started).inMilliseconds, warm: revived.warm, coldReason: revived.reason,
                               hostPid: root.hostPid, phases: root.phases, steps: revived.steps, members: restored.members.map(\.pid))
    }

    /// Puts the data files of the epoch in place (the warm clone's copies renamed into place, or
    /// `materialize`d from the chain and written), then runs `finish` (the warm clone, which
    /// holds that epoch) or, without one or when that fails, `cold`. Returns the restore, the
    /// files written, whether it was warm (else why not), the steps with `files`, `finish` or
    /// `restore` and `sync` added, and when the process ran.
    private static func revive<Restored: Sendable>(
        files: DataFileCopies?, materialize: @escaping @Sendable () throws -> [String: MaterializedFile],
        finish: (() async throws -> Restored)?, discard: () async -> Void, cold: () async throws -> Restored,
        reason: String?, steps: [String: Double], logger: Logger
    ) async throws -> (result: Restored, written: Int, warm: Bool, reason: String?, steps: [String: Double], finished: ContinuousClock.Instant) {
        let clock = ContinuousClock(), filesStarted = clock.now
        var steps = steps
        let written: Int
        do {
            // Files first: the restore opens them by path (and refuses what is missing).
            written = try await Blocking.run("mitosis-promote-files") {
                if let files { return try files.install() }
                return try installDataFiles(materialize())
            }
        } catch {
            await discard()
            if let files { _ = try? await Blocking.run("mitosis-promote-files") { files.discard() } }
            throw error
        }
        let filesDone = clock.now
        steps["files"] = (filesDone - filesStarted).inMilliseconds
        // The copies' data and the renames made durable while the process is finished.
        let durable = files.map { files in Task { try await Blocking.run("mitosis-promote-sync") { try files.sync() } } }
        var reason = reason
        var result: Restored?
        if let finish {
            do {
                result = try await finish()
            } catch {
                reason = "finishing the warm clone failed: \(error)"
                logger.warning("promote: \(reason!); restoring cold")
            }
        }
        let warm = result != nil
        if result == nil {
            do { result = try await cold() } catch {
                _ = try? await durable?.value
                throw error
            }
        }
        let finished = clock.now
        steps[warm ? "finish" : "restore"] = (finished - filesDone).inMilliseconds
        if let durable {
            do { try await durable.value } catch { logger.warning("promote: syncing the data files failed: \(error)") }
            steps["sync"] = (clock.now - finished).inMilliseconds
        }
        return (result!, written, warm, warm ? nil : reason, steps, finished)
    }

    /// Milliseconds since `created` (ISO 8601), or -1 when it does not parse.
    private static func age(_ created: String) -> Double {
        (try? Date(created, strategy: .iso8601)).map { Date().timeIntervalSince($0) * 1000 } ?? -1
    }

    /// Creates the fence `PROMOTED` exclusively: a second promotion fails here. Returns it open,
    /// for `syncFence`.
    static func createFence(_ directory: StandbyDirectory) throws -> FileDescriptor {
        do {
            let fence = try Kernel.openAt(nil, directory.fencePath, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
            try? Kernel.writeAll(fence, Array("promoted by pid \(Kernel.currentProcessID()) at \(Date())\n".utf8))
            return fence
        } catch .fileExists {
            throw ReplicationError.promotion("\(directory.path) was already promoted (\(directory.fencePath) exists)")
        } catch {
            throw ReplicationError.promotion("cannot fence \(directory.path): \(error)")
        }
    }

    /// Makes the fence durable (the file, then its directory) and closes it.
    static func syncFence(_ fence: FileDescriptor, _ directory: StandbyDirectory) throws {
        defer { try? fence.close() }
        try Kernel.sync(fence)
        let parent = try Kernel.openDirectory(directory.path)
        defer { try? parent.close() }
        try Kernel.sync(parent)
    }

    /// Stops the standby holding the lock (its warm clone dies with it), and takes the lock.
    static func stopStandbyAndLock(_ directory: StandbyDirectory, timeout: Duration, logger: Logger) throws -> FileDescriptor {
        let lock: FileDescriptor
        do {
            lock = try Kernel.openAt(nil, directory.lockPath, options: [.readWrite, .create, .noFollow], mode: 0o600)
        } catch {
            throw ReplicationError.promotion("cannot open \(directory.lockPath): \(error)")
        }
        if (try? Kernel.lockExclusive(lock, wait: false)) != nil { return lock }
        let holder = (try? Kernel.readAt(lock, offset: 0, count: 32)).flatMap { Int32(String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) }
        if let holder, holder > 0 {
            logger.info("promote: stopping the standby (pid \(holder))")
            try? Kernel.sendSignal(pid: holder, Kernel.terminateSignal)
        }
        let deadline = ContinuousClock.now + timeout
        var killed = false
        while true {
            if (try? Kernel.lockExclusive(lock, wait: false)) != nil { return lock }
            if ContinuousClock.now >= deadline {
                guard !killed, let holder, holder > 0 else {
                    try? lock.close()
                    throw ReplicationError.standbyStillRunning("the standby of \(directory.path) still holds \(directory.lockPath); nothing was restored")
                }
                logger.warning("promote: the standby (pid \(holder)) did not stop within \(timeout); killing it")
                try? Kernel.sendSignal(pid: holder, Kernel.killSignal)
                killed = true
            }
            Thread.sleep(forTimeInterval: 0.005)
        }
    }

    /// Writes every data file of an epoch to its path (a temporary file beside it, synced,
    /// renamed over it), removes those removed. Returns how many were written.
    static func installDataFiles(_ files: [String: MaterializedFile]) throws -> Int {
        var written = 0
        for (path, file) in files.sorted(by: { $0.key < $1.key }) {
            guard !file.removed else {
                try? Kernel.unlinkAt(nil, path)
                continue
            }
            let slash = path.lastIndex(of: "/")!
            let parentPath = slash == path.startIndex ? "/" : String(path[..<slash])
            let name = String(path[path.index(after: slash)...])
            do {
                try DirectorySink.createDirectories(parentPath)
                let parent = try Kernel.openDirectory(parentPath)
                defer { try? parent.close() }
                let temporary = ".\(name).mitosis-promote"
                try? Kernel.unlinkAt(parent, temporary)
                let fd = try Kernel.openAt(parent, temporary, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
                do {
                    try Kernel.writeAll(fd, file.content)
                    try Kernel.changeMode(fd, file.mode)
                    try Kernel.sync(fd)
                    try? fd.close()
                } catch {
                    try? fd.close()
                    throw error
                }
                try Kernel.rename(parent, temporary, name)
                try Kernel.sync(parent)
            } catch {
                throw ReplicationError.promotion("writing the data file \(path): \(error)")
            }
            written += 1
        }
        return written
    }
}
