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
        try await Blocking.run("mitosis-promote-fence") { try fence(directory) }
        if let standby = StandbyControl.standby(serving: path) { return try await standby.promote() }
        // The standby answers once the process runs (or it failed): a warm clone that fails is
        // restored cold by the standby itself. No answer in time: nothing more is tried, since
        // the standby may still bring the process to life.
        if let reply = try await StandbyControl.request(directory, "promote", timeout: .seconds(300)) {
            guard var result = reply.result else {
                throw ReplicationError.promotion("the standby of \(path) did not promote: \(reply.error ?? "no reason given")")
            }
            result.totalMilliseconds = milliseconds(clock.now - started)
            return result
        }
        // Stop and lock on a thread of their own: they wait on a lock.
        let lock = try await Blocking.run("mitosis-promote") { try stopStandbyAndLock(directory, timeout: standbyTimeout, logger: logger) }
        defer { try? lock.close() }
        let scan = directory.scan()
        for line in scan.skipped { logger.warning("promote: passing over \(line)") }
        guard let newest = scan.newest else { throw ReplicationError.nothingCommitted(path) }
        return try await restore(epoch: newest.epoch, image: newest.image, husk: nil, files: nil, reason: "no standby serves \(path)",
                                 inNewPidNamespace: false, started: started, stopped: clock.now, logger: logger)
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
        var taken: (husk: PreparedProcess?, files: DataFilePicture?, reason: String?) = (nil, nil, "the standby keeps no warm clone (--warm)")
        if let warm = standby.warm { taken = await warm.take(at: committed.epoch, path: path) }
        let image: CheckpointImage
        do {
            image = try await Blocking.run("mitosis-promote-open") { try CheckpointImage.open(path) }
        } catch {
            await taken.husk?.discard()
            throw error
        }
        return try await restore(epoch: committed.epoch, image: image, husk: taken.husk, files: taken.files, reason: taken.reason,
                                 inNewPidNamespace: standby.options.warm?.pidNamespace ?? false, started: started, stopped: stopped,
                                 logger: standby.logger)
    }

    /// Writes the data files of the epoch (from the warm clone's picture, or replayed from the
    /// chain), then finishes `husk` (which holds that epoch) or, without one or when that fails,
    /// restores the epoch cold.
    private static func restore(epoch: Epoch, image: CheckpointImage, husk: PreparedProcess?, files: DataFilePicture?, reason: String?,
                                inNewPidNamespace: Bool, started: ContinuousClock.Instant, stopped: ContinuousClock.Instant,
                                logger: Logger) async throws -> PromotionResult {
        let clock = ContinuousClock()
        let written: Int
        do {
            // Files first: the restore opens them by path (and refuses what is missing).
            written = try await Blocking.run("mitosis-promote-files") {
                try installDataFiles(files?.files ?? FileDeltaLog.materialize(try image.chain()))
            }
        } catch {
            await husk?.discard()
            throw error
        }
        let filesDone = clock.now
        var reason = reason
        var result: RestoreResult?
        if let husk {
            do {
                result = try await husk.finish()
            } catch {
                reason = "finishing the warm clone failed: \(error)"
                logger.warning("promote: \(reason!); restoring cold")
            }
        }
        let warm = result != nil
        if result == nil { result = try await Restorer(image: image).restore(inNewPidNamespace: inNewPidNamespace) }
        let restored = result!
        let finished = clock.now
        let created = image.manifest.created
        let age = (try? Date(created, strategy: .iso8601)).map { Date().timeIntervalSince($0) * 1000 } ?? -1
        return PromotionResult(epoch: epoch, imageID: image.manifest.id, image: image.path, created: created,
                               ageMilliseconds: age, pid: restored.pid, dataFiles: written,
                               stopStandbyMilliseconds: milliseconds(stopped - started), dataFilesMilliseconds: milliseconds(filesDone - stopped),
                               restoreMilliseconds: restored.restoreMilliseconds, totalMilliseconds: milliseconds(finished - started),
                               warm: warm, coldReason: warm ? nil : reason, hostPid: restored.hostPid, phases: restored.phases)
    }

    /// Creates the fence `PROMOTED` exclusively and syncs it: a second promotion fails here.
    static func fence(_ directory: StandbyDirectory) throws {
        do {
            let fence = try Kernel.openAt(nil, directory.fencePath, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
            try? Kernel.writeAll(fence, Array("promoted by pid \(Kernel.currentProcessID()) at \(Date())\n".utf8))
            try? Kernel.sync(fence)
            try? fence.close()
            if let parent = try? Kernel.openDirectory(directory.path) {
                try? Kernel.sync(parent)
                try? parent.close()
            }
        } catch .fileExists {
            throw ReplicationError.promotion("\(directory.path) was already promoted (\(directory.fencePath) exists)")
        } catch {
            throw ReplicationError.promotion("cannot fence \(directory.path): \(error)")
        }
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
