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
    /// promotion that was.
    public var created: String
    public var ageMilliseconds: Double
    public var pid: Int32
    public var dataFiles: Int
    /// Taking the directory from its standby, writing the data files, the restore, all of it.
    public var stopStandbyMilliseconds: Double
    public var dataFilesMilliseconds: Double
    public var restoreMilliseconds: Double
    public var totalMilliseconds: Double
}

/// Brings the protected process to life on the standby from the newest committed epoch (a cold
/// restore, Docs/restore.md).
///
/// First the directory is fenced (`PROMOTED`: no standby serves it again, so there is never a
/// second process from it), its standby stopped (SIGTERM, then SIGKILL) and its lock taken, so
/// that no epoch commits after the one chosen. Then the epoch's data files are written to their
/// paths and the process restored. A failure leaves the fence: promoting twice would make two
/// primaries; remove `PROMOTED` by hand to serve the directory again.
public enum Promotion {
    public static func promote(directory path: String, standbyTimeout: Duration = .seconds(10),
                               logger: Logger = Logger(label: "mitosis.promote")) async throws -> PromotionResult {
        let clock = ContinuousClock(), started = clock.now
        let directory = StandbyDirectory(path)
        guard (try? Kernel.status(directory.epochsPath))?.type == .directory else { throw ReplicationError.nothingCommitted(path) }
        // Fence and stop on a thread of their own: they wait on a lock.
        let lock = try await Blocking.run("mitosis-promote") { try fenceAndLock(directory, timeout: standbyTimeout, logger: logger) }
        defer { try? lock.close() }
        let stopped = clock.now
        let scan = directory.scan()
        for line in scan.skipped { logger.warning("promote: passing over \(line)") }
        guard let newest = scan.newest else { throw ReplicationError.nothingCommitted(path) }
        let restorer = try Restorer(image: newest.image)
        let chain = restorer.chain
        // Files first: the restore opens them by path (and refuses what is missing).
        let written = try await Blocking.run("mitosis-promote-files") { try installDataFiles(chain) }
        let filesDone = clock.now
        let result = try await restorer.restore()
        let finished = clock.now
        let created = newest.image.manifest.created
        let age = (try? Date(created, strategy: .iso8601)).map { Date().timeIntervalSince($0) * 1000 } ?? -1
        return PromotionResult(epoch: newest.epoch, imageID: newest.image.manifest.id, image: newest.image.path, created: created,
                               ageMilliseconds: age, pid: result.pid, dataFiles: written,
                               stopStandbyMilliseconds: milliseconds(stopped - started), dataFilesMilliseconds: milliseconds(filesDone - stopped),
                               restoreMilliseconds: result.restoreMilliseconds, totalMilliseconds: milliseconds(finished - started))
    }

    /// Creates the fence, stops the standby holding the lock, and takes the lock.
    static func fenceAndLock(_ directory: StandbyDirectory, timeout: Duration, logger: Logger) throws -> FileDescriptor {
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

    /// Writes every data file of the chain's newest epoch to its path (a temporary file beside
    /// it, synced, renamed over it), removes those removed. Returns how many were written.
    static func installDataFiles(_ chain: CheckpointChain) throws -> Int {
        var written = 0
        for (path, file) in try FileDeltaLog.materialize(chain).sorted(by: { $0.key < $1.key }) {
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
