import Foundation
import Logging
import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisRestore
import NIOConcurrencyHelpers
import SystemPackage

/// What the standby does with a frame: nothing more, answer it, or end the connection (after
/// sending a refusal, or without a word for bytes that make no sense).
enum StoreReply: Sendable, Equatable {
    case none
    case send(ReplicationFrame)
    case refuse(ReplicationFrame, log: String)
    case drop(log: String)
}

/// The standby's side of replication, on a thread of its own: every file it writes is written,
/// synced and renamed there, never on an event loop or the cooperative pool.
///
/// One primary at a time: a new connection ends the epoch in flight of the previous one.
/// An epoch is committed only once its image is complete, checked, synced and renamed into
/// place; only then is it acknowledged.
actor StandbyStore {
    nonisolated let directory: StandbyDirectory
    nonisolated let compactEvery: Int
    /// Every epoch's manifest decoded whole (a warm clone applies each one); otherwise only
    /// its summary, and the whole once a second for the readiness check, after the
    /// acknowledgement (`checkReadinessIfDue`).
    nonisolated let decodesEveryManifest: Bool
    private let logger: Logger
    private let lock: FileDescriptor
    private(set) var term: Term
    private(set) var committed: CommittedEpoch?
    /// The newest committed image as opened to check it (for the warm clone), when its manifest
    /// was decoded whole; nil once a compaction has replaced its files.
    private(set) var committedImage: CheckpointImage?
    /// The newest committed epoch's tree image when it is a tree epoch (`protect --tree`);
    /// `committedImage` is nil then.
    private(set) var committedTree: TreeImage?
    /// The committed image's sequence in its chain, and the chain's length.
    private var committedSequence = 0
    private var chainLength = 0
    /// The newest chain as committed by this store, newest first (`CheckpointImage.asAncestor()`:
    /// no mappings), for compaction to fold without decoding every manifest again; it holds the
    /// whole chain only when its count is `chainLength` (not after a start, nor for trees).
    private var chainImages: [(epoch: Epoch, image: CheckpointImage)] = []
    /// Counts the full bases (of one process or of a tree) committed: a compaction of an older
    /// chain is not swapped in.
    private var generation = 0
    private(set) var readiness: (ready: Bool, reasons: [String]) = (false, ["no epoch received yet"])
    private var readinessChecked: ContinuousClock.Instant?
    /// The manifest (as received) of the epoch just committed whose readiness is still to be
    /// checked, once its acknowledgement is out.
    private var readinessPending: [UInt8]?
    private(set) var statistics = StandbyStatistics()
    private var connection = 0
    /// The connection's term and primary, once its hello came.
    private var peer: (term: Term, hello: Hello)?
    private var inFlight: InFlight?
    /// The tree epoch in flight: `inFlight` is then the member image being received, if any.
    private var treeInFlight: TreeInFlight?
    private var closed = false
    private let metrics = StandbyMetrics()
    /// The compaction writing its base in the background (`Compaction`), and whether it should stop.
    private let background = NIOLockedValueBox(BackgroundCompaction.idle)
    private let stopping = NIOLockedValueBox(false)

    private enum BackgroundCompaction {
        case idle
        case writing(Epoch, generation: Int, started: ContinuousClock.Instant)
        case written(Compaction.Base, generation: Int, started: ContinuousClock.Instant)
        case failed(Epoch, String)
    }

    private struct InFlight {
        var epoch: Epoch
        var parent: Epoch
        var sent: CheckpointHeader
        var stored: CheckpointHeader
        var sink: DirectorySink
        var files: FileDeltaWriter?
        var bytes: UInt64 = 0
        var started = ContinuousClock.now
    }

    private struct TreeInFlight {
        var epoch: Epoch
        var parent: Epoch
        var members: TreeEpochMembers
        var writer: TreeImageWriter
        /// The members' images committed inside the tree's partial directory, as stored.
        var finished: [Int32: CheckpointManifest] = [:]
        /// The tree's data-file changes (`files.log` of the tree directory), sent after the
        /// members' images.
        var files: FileDeltaWriter?
        var bytes: UInt64 = 0
        var started = ContinuousClock.now
    }

    private nonisolated let executor = DedicatedThreadExecutor(name: "mitosis-standby")
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Opens (creating it if needed) and locks the standby directory, removes work left by a
    /// previous run, and finds the newest committed epoch. Blocking: call it off the pool.
    init(directory: StandbyDirectory, compactEvery: Int, minimumTerm: Term = Term(0), decodesEveryManifest: Bool = true, logger: Logger) throws {
        self.directory = directory
        self.compactEvery = compactEvery
        self.decodesEveryManifest = decodesEveryManifest
        self.logger = logger
        do {
            try DirectorySink.createDirectories(directory.epochsPath)
        } catch {
            throw ReplicationError.standbyDirectory(directory.path, "\(error)")
        }
        let lock: FileDescriptor
        do {
            lock = try Kernel.openAt(nil, directory.lockPath, options: [.readWrite, .create, .noFollow], mode: 0o600)
        } catch {
            throw ReplicationError.standbyDirectory(directory.path, "cannot open \(directory.lockPath): \(error)")
        }
        do {
            try Kernel.lockExclusive(lock, wait: false)
        } catch {
            try? lock.close()
            throw ReplicationError.standbyDirectory(directory.path, "another standby (or a promotion) holds \(directory.lockPath)")
        }
        if directory.isPromoted {
            try? lock.close()
            throw ReplicationError.standbyDirectory(directory.path, "it was promoted (\(directory.fencePath) exists): a standby never serves a promoted directory")
        }
        try? Kernel.truncate(lock, to: 0)
        try? Kernel.writeAll(lock, Array("\(Kernel.currentProcessID())\n".utf8), at: 0)
        self.lock = lock
        let recorded = directory.readTerm()
        if minimumTerm > recorded {
            do { try directory.writeTerm(minimumTerm) } catch {
                try? lock.close()
                throw ReplicationError.standbyDirectory(directory.path, "cannot record term \(minimumTerm): \(error)")
            }
            logger.info("standby: term \(minimumTerm) (was \(recorded)), from the failover layer")
        }
        term = max(recorded, minimumTerm)
        let scan = directory.scan()
        for line in scan.skipped { logger.warning("standby: passing over \(line)") }
        for name in scan.leftovers {
            logger.info("standby: removing \(name), not part of the newest committed chain")
            directory.remove(name)
        }
        if let tree = scan.tree, let newest = scan.newest {
            committed = CommittedEpoch(epoch: newest.epoch, imageID: tree.manifest.id)
            committedTree = tree
            chainLength = scan.chainLength
            readiness = Self.readiness(of: tree)
        } else if let newest = scan.newest {
            committed = CommittedEpoch(epoch: newest.epoch, imageID: newest.image.manifest.id)
            committedSequence = newest.image.manifest.sequence
            chainLength = scan.chainLength
            readiness = Self.readiness(of: newest.image)
        }
        statistics.committed = committed
        metrics.epoch.record(Int64(clamping: committed?.epoch.rawValue ?? 0))
        metrics.term.record(Int64(clamping: term.rawValue))
        metrics.ready.record(readiness.ready ? 1 : 0)
    }

    deinit {
        executor.shutdown()
        try? lock.close()
    }

    /// A new connection: it supersedes the previous one, whose epoch in flight is abandoned.
    func connect() -> Int {
        abandon("a new connection arrived")
        connection += 1
        peer = nil
        statistics.connections += 1
        return connection
    }

    /// The connection ended: its epoch in flight, if any, is abandoned (nothing committed).
    func disconnect(_ token: Int) {
        guard token == connection else { return }
        abandon("the connection ended")
        peer = nil
    }

    /// Stops accepting: the epoch in flight is abandoned, later frames dropped.
    func close() {
        abandon("the standby is stopping")
        closed = true
        stopping.withLockedValue { $0 = true }
    }

    func receive(_ frame: ReplicationFrame, connection token: Int) -> StoreReply {
        guard token == connection else { return .drop(log: "superseded by a newer connection") }
        guard !closed else { return .drop(log: "the standby is stopping") }
        if frame.term < term {
            abandon("a frame of an older term")
            return refuse(.olderTerm, "term \(frame.term) is older than \(term), the newest this standby has seen", frame)
        }
        if frame.type != .hello {
            guard let peer else { return violation("a \(frame.type) frame before hello") }
            guard frame.term == peer.term else { return violation("a \(frame.type) frame of term \(frame.term) on a connection of term \(peer.term)") }
        }
        do {
            switch frame.type {
            case .hello: return try hello(frame)
            case .imageBegin: return try begin(frame)
            case .imagePages: return try pages(frame)
            case .fileDelta: return try fileDelta(frame)
            case .imageFinish: return try finish(frame)
            case .treeBegin: return try treeBegin(frame)
            case .treeFinish: return try treeFinish(frame)
            case .imageAbort:
                guard let inFlight, inFlight.epoch == frame.epoch else { return violation("abort of epoch \(frame.epoch), which is not in flight") }
                abandon("the primary aborted it: \(String(decoding: frame.payload.prefix(200), as: UTF8.self))")
                return .none
            case .state, .ack, .refuse:
                return violation("a \(frame.type) frame from a primary")
            }
        } catch let error as ProtocolViolation {
            return violation(error.reason)
        } catch let error as Refused {
            abandon(error.refusal.reason)
            return refuse(error.refusal.code, error.refusal.reason, frame)
        } catch {
            abandon("\(error)")
            return refuse(.storage, "\(error)", frame)
        }
    }

    // MARK: Frames

    private func hello(_ frame: ReplicationFrame) throws -> StoreReply {
        guard peer == nil else { throw ProtocolViolation("a second hello") }
        let hello = try MessageCoding.decode(Hello.self, frame.payload)
        guard hello.pageSize == CheckpointHeader.systemPageSize else {
            throw Refused(.malformed, "page size \(hello.pageSize), this standby's is \(CheckpointHeader.systemPageSize)")
        }
        guard CheckpointManifest.readableFormatVersions.contains(hello.formatVersion) else {
            throw Refused(.malformed, "image format \(hello.formatVersion) is not readable here")
        }
        if frame.term > term {
            do { try directory.writeTerm(frame.term) } catch { throw Refused(.storage, "cannot record term \(frame.term): \(error)") }
            logger.info("standby: term \(frame.term) (was \(term))")
            term = frame.term
            metrics.term.record(Int64(clamping: term.rawValue))
        }
        peer = (frame.term, hello)
        logger.info("standby: primary \(hello.node) pid \(hello.pid) connected, term \(frame.term); committed epoch \(committed?.epoch.description ?? "none")")
        let state = StandbyState(committed: committed, term: term, ready: readiness.ready, reasons: readiness.reasons)
        return .send(ReplicationFrame(.state, term: term, epoch: committed?.epoch ?? .none, payload: MessageCoding.encode(state)))
    }

    private func begin(_ frame: ReplicationFrame) throws -> StoreReply {
        guard inFlight == nil else { throw ProtocolViolation("epoch \(frame.epoch) begins while epoch \(inFlight!.epoch) is in flight") }
        if treeInFlight != nil { return try beginMember(frame) }
        guard peer!.hello.tree != true else { throw ProtocolViolation("epoch \(frame.epoch): an image outside a tree epoch from a primary protecting a tree") }
        guard frame.epoch > (committed?.epoch ?? .none) else {
            throw ProtocolViolation("epoch \(frame.epoch) is not after the committed epoch \(committed?.epoch ?? .none)")
        }
        let header = try MessageCoding.decode(CheckpointHeader.self, frame.payload)
        guard header.pid == peer!.hello.pid, header.pageSize == peer!.hello.pageSize else {
            throw ProtocolViolation("epoch \(frame.epoch): header of pid \(header.pid) page size \(header.pageSize), the hello said \(peer!.hello.pid) and \(peer!.hello.pageSize)")
        }
        var stored = header
        if frame.parent == .none {
            guard header.kind == .full, header.parent == nil else { throw ProtocolViolation("epoch \(frame.epoch) has no parent epoch but is not a full checkpoint") }
            stored.sequence = 0
        } else {
            guard let committed, frame.parent == committed.epoch, committedTree == nil else {
                throw Refused(.parentMismatch, "epoch \(frame.epoch) builds on epoch \(frame.parent); the newest committed is \(committed?.epoch.description ?? "none")")
            }
            guard header.kind == .incremental, header.parent?.id == committed.imageID else {
                throw Refused(.parentMismatch, "epoch \(frame.epoch) builds on image \(header.parent?.id ?? "none"); epoch \(committed.epoch) is image \(committed.imageID)")
            }
            stored.parent = ParentLink(path: "../" + committed.epoch.directoryName, id: committed.imageID)
            stored.sequence = committedSequence + 1
        }
        let sink = DirectorySink(directory: directory.imagePath(frame.epoch))
        do {
            try sink.begin(stored)
        } catch let error as ImageError {
            if case .alreadyExists = error { directory.remove(frame.epoch.directoryName) }
            throw Refused(.storage, "epoch \(frame.epoch): \(error)")
        }
        inFlight = InFlight(epoch: frame.epoch, parent: frame.parent, sent: header, stored: stored, sink: sink)
        return .none
    }

    /// A member's image of the tree epoch in flight: written inside the tree's partial
    /// directory, its parent the same member's image in the tree epoch it builds on.
    private func beginMember(_ frame: ReplicationFrame) throws -> StoreReply {
        let tree = treeInFlight!
        guard frame.epoch == tree.epoch, frame.parent == tree.parent else {
            throw ProtocolViolation("an image of epoch \(frame.epoch) over \(frame.parent) inside tree epoch \(tree.epoch) over \(tree.parent)")
        }
        let header = try MessageCoding.decode(CheckpointHeader.self, frame.payload)
        guard tree.members.members.contains(where: { $0.pid == header.pid }), tree.finished[header.pid] == nil, header.pageSize == peer!.hello.pageSize else {
            throw ProtocolViolation("tree epoch \(frame.epoch): an image of process \(header.pid), not a member still expected")
        }
        var stored = header
        if tree.parent == .none {
            guard header.kind == .full, header.parent == nil else { throw ProtocolViolation("tree epoch \(frame.epoch) has no parent epoch but member \(header.pid)'s image is not full") }
            stored.sequence = 0
        } else {
            let base = committedTree!.members.first { $0.manifest.pid == header.pid }!
            guard header.kind == .incremental, header.parent?.id == base.manifest.id else {
                throw Refused(.parentMismatch, "tree epoch \(frame.epoch): member \(header.pid) builds on image \(header.parent?.id ?? "none"); epoch \(tree.parent) holds image \(base.manifest.id)")
            }
            stored.parent = ParentLink(path: "../../\(tree.parent.directoryName)/\(header.pid)", id: base.manifest.id)
            stored.sequence = base.manifest.sequence + 1
        }
        let sink = DirectorySink(directory: tree.writer.memberPath(header.pid))
        do { try sink.begin(stored) } catch { throw Refused(.storage, "tree epoch \(frame.epoch), member \(header.pid): \(error)") }
        inFlight = InFlight(epoch: frame.epoch, parent: frame.parent, sent: header, stored: stored, sink: sink)
        return .none
    }

    /// A tree epoch begins: incremental only over the committed tree epoch with the same
    /// members and parents (a tree that changed comes as a full tree epoch).
    private func treeBegin(_ frame: ReplicationFrame) throws -> StoreReply {
        guard inFlight == nil, treeInFlight == nil else { throw ProtocolViolation("tree epoch \(frame.epoch) begins while an epoch is in flight") }
        guard peer!.hello.tree == true else { throw ProtocolViolation("a tree epoch from a primary that protects one process") }
        guard frame.epoch > (committed?.epoch ?? .none) else {
            throw ProtocolViolation("tree epoch \(frame.epoch) is not after the committed epoch \(committed?.epoch ?? .none)")
        }
        let members = try MessageCoding.decode(TreeEpochMembers.self, frame.payload)
        let pids = members.members.map(\.pid)
        guard members.root == peer!.hello.pid, pids.first == members.root, Set(pids).count == pids.count, pids.allSatisfy({ $0 > 0 }), pids.count <= 4096 else {
            throw ProtocolViolation("tree epoch \(frame.epoch): members \(pids.prefix(16)) do not make a tree under \(peer!.hello.pid)")
        }
        if frame.parent != .none {
            guard let committed, frame.parent == committed.epoch, let base = committedTree else {
                throw Refused(.parentMismatch, "tree epoch \(frame.epoch) builds on epoch \(frame.parent); the newest committed is \(committed.map { "\($0.epoch)" } ?? "none")\(committed != nil && committedTree == nil ? ", not a tree epoch" : "")")
            }
            let held = base.manifest.members.dropFirst().map { TreeEpochMembers.Member(pid: $0.pid, parent: $0.parent) }
            guard base.manifest.root == members.root, held == Array(members.members.dropFirst()) else {
                throw Refused(.parentMismatch, "tree epoch \(frame.epoch): members \(pids.map(String.init).joined(separator: ",")), epoch \(frame.parent) holds \(base.manifest.members.map { String($0.pid) }.joined(separator: ",")) (or other parents): the tree changed, a full tree epoch is needed")
            }
        }
        let writer: TreeImageWriter
        do { writer = try TreeImageWriter(path: directory.imagePath(frame.epoch)) } catch {
            if case .alreadyExists = error { directory.remove(frame.epoch.directoryName) }
            throw Refused(.storage, "tree epoch \(frame.epoch): \(error)")
        }
        treeInFlight = TreeInFlight(epoch: frame.epoch, parent: frame.parent, members: members, writer: writer)
        return .none
    }

    /// The tree epoch's manifest: every member's image received and as the manifest names it;
    /// then `tree.json` written and the tree epoch renamed into place, read back, acknowledged.
    private func treeFinish(_ frame: ReplicationFrame) throws -> StoreReply {
        guard inFlight == nil, let tree = treeInFlight, tree.epoch == frame.epoch, tree.parent == frame.parent else {
            throw ProtocolViolation("a treeFinish frame of epoch \(frame.epoch) over \(frame.parent), which is not in flight")
        }
        let clock = ContinuousClock(), received = clock.now
        let manifest = try MessageCoding.decode(TreeManifest.self, frame.payload)
        if let problem = manifest.problems().first { throw ProtocolViolation("tree epoch \(frame.epoch): \(problem)") }
        guard manifest.root == tree.members.root,
              manifest.members.map({ TreeEpochMembers.Member(pid: $0.pid, parent: $0.parent) }) == tree.members.members else {
            throw ProtocolViolation("tree epoch \(frame.epoch): the manifest's members differ from those the epoch began with")
        }
        for member in manifest.members where tree.finished[member.pid]?.id != member.imageId {
            throw ProtocolViolation("tree epoch \(frame.epoch): member \(member.pid)'s image \(member.imageId) was not received")
        }
        guard !directory.isPromoted else { throw Refused(.promoted, "\(directory.path) was promoted: epoch \(frame.epoch) is not committed") }
        if var files = tree.files { try files.seal() }
        do { try tree.writer.commit(manifest) } catch { throw Refused(.storage, "tree epoch \(frame.epoch): \(error)") }
        treeInFlight = nil
        let synced = clock.now
        let image: TreeImage
        do { image = try TreeImage.open(directory.imagePath(frame.epoch)) } catch {
            directory.remove(frame.epoch.directoryName)
            throw ProtocolViolation("tree epoch \(frame.epoch) discarded: \(error)")
        }
        let verified = clock.now
        committed = CommittedEpoch(epoch: frame.epoch, imageID: manifest.id)
        committedImage = nil
        committedTree = image
        chainImages = []
        chainLength = tree.parent == .none ? 1 : chainLength + 1
        if tree.parent == .none { generation += 1 }  // a base compacted before is not the newest any more
        if let checked = readinessChecked, ContinuousClock.now - checked < .seconds(1) {} else {
            readiness = Self.readiness(of: image)
            readinessChecked = ContinuousClock.now
        }
        recordCommit(frame.epoch, bytes: tree.bytes, started: tree.started, phases: ["receive": (received - tree.started).inMilliseconds, "commit": (synced - received).inMilliseconds,
                                                                                      "verify": (verified - synced).inMilliseconds, "readiness": (clock.now - verified).inMilliseconds])
        return .send(ReplicationFrame(.ack, term: term, epoch: frame.epoch, parent: frame.parent, payload: Array(manifest.id.utf8)))
    }

    private func current(_ frame: ReplicationFrame) throws -> InFlight {
        guard let inFlight, inFlight.epoch == frame.epoch, inFlight.parent == frame.parent else {
            throw ProtocolViolation("a \(frame.type) frame of epoch \(frame.epoch) over \(frame.parent), which is not in flight")
        }
        return inFlight
    }

    private func pages(_ frame: ReplicationFrame) throws -> StoreReply {
        let epoch = try current(frame)
        guard frame.payload.count > 8 else { throw ProtocolViolation("epoch \(frame.epoch): pages frame without pages") }
        let address = frame.payload.littleEndianUInt64(at: 0)
        do {
            try frame.payload.withUnsafeBytes { try epoch.sink.writePages(at: address, UnsafeRawBufferPointer(rebasing: $0[8...])) }
        } catch let error as ImageError {
            if case .invalidPages(let why) = error { throw ProtocolViolation("epoch \(frame.epoch): \(why)") }
            throw Refused(.storage, "epoch \(frame.epoch): \(error)")
        }
        inFlight?.bytes += UInt64(frame.payload.count - 8)
        return .none
    }

    private func fileDelta(_ frame: ReplicationFrame) throws -> StoreReply {
        if let tree = treeInFlight {
            // A tree's data files belong to the tree epoch, not to a member's image: they come
            // once every member's image is in, before the tree's manifest.
            guard inFlight == nil, tree.epoch == frame.epoch, tree.parent == frame.parent else {
                throw ProtocolViolation("tree epoch \(frame.epoch): a data-file change inside a member's image or of another epoch")
            }
            var writer = tree.files ?? FileDeltaWriter(imageDirectory: tree.writer.partialPath)
            try writer.add(frame.payload)
            treeInFlight?.files = writer
            treeInFlight?.bytes += UInt64(frame.payload.count)
            return .none
        }
        let epoch = try current(frame)
        guard let partial = epoch.sink.partialPath else { throw Refused(.storage, "epoch \(frame.epoch) has no directory") }
        var writer = epoch.files ?? FileDeltaWriter(imageDirectory: partial)
        try writer.add(frame.payload)
        inFlight?.files = writer
        inFlight?.bytes += UInt64(frame.payload.count)
        return .none
    }

    private func finish(_ frame: ReplicationFrame) throws -> StoreReply {
        let epoch = try current(frame)
        let clock = ContinuousClock(), received = clock.now
        if treeInFlight != nil {
            // A member of the tree epoch: committed inside the tree's partial directory only.
            let path = treeInFlight!.writer.memberPath(epoch.stored.pid)
            let (stored, _, _) = try finishImage(frame, epoch, path: path, whole: true)
            treeInFlight!.finished[stored.pid] = stored
            treeInFlight!.bytes += epoch.bytes
            return .none
        }
        guard !directory.isPromoted else { throw Refused(.promoted, "\(directory.path) was promoted: epoch \(frame.epoch) is not committed") }
        // The restore check reads the whole manifest: once a second is enough for a status.
        let readinessDue = readinessChecked.map { ContinuousClock.now - $0 >= .seconds(1) } ?? true
        // A full base is verified against its mappings (below): decoded whole, as with a warm clone.
        let whole = decodesEveryManifest || epoch.sent.kind == .full
        let (stored, image, synced) = try finishImage(frame, epoch, path: directory.imagePath(frame.epoch), whole: whole)
        let verified = clock.now
        committed = CommittedEpoch(epoch: frame.epoch, imageID: stored.id)
        committedImage = whole ? image : nil
        committedTree = nil
        committedSequence = stored.sequence
        chainLength = stored.kind == .full ? 1 : chainLength + 1
        if stored.kind == .full { generation += 1 }
        if stored.kind == .full { chainImages = [] }
        // Bounded: a chain that is not compacted (`compactEvery` 0, or compactions failing) is
        // read from the directory when it is.
        if compactEvery > 0, chainImages.count < 2 * compactEvery + 2 {
            chainImages.insert((frame.epoch, image.asAncestor()), at: 0)
        } else {
            chainImages = []
        }
        readinessPending = nil
        if readinessDue {
            // Decoding a redis manifest whole takes 10–35 ms here: without a warm clone (which
            // needs it decoded now), it is done once the acknowledgement is out.
            if whole { readiness = Self.readiness(of: image.manifest) } else { readinessPending = frame.payload }
            readinessChecked = ContinuousClock.now
        }
        recordCommit(frame.epoch, bytes: epoch.bytes, started: epoch.started,
                     phases: ["receive": (received - epoch.started).inMilliseconds, "commit": (synced - received).inMilliseconds,
                              "verify": (verified - synced).inMilliseconds, "readiness": (clock.now - verified).inMilliseconds])
        let ack = ReplicationFrame(.ack, term: term, epoch: frame.epoch, parent: frame.parent, payload: Array(stored.id.utf8))
        return .send(ack)
    }

    /// Commits the image in flight at `path` from its manifest frame, and checks it: the pages
    /// that arrived are those the primary stored, and the image reads back sound; otherwise
    /// it is removed before anyone relies on it. `whole`: the manifest is decoded whole;
    /// otherwise only its summary (`ManifestRelink.summary`), and the image returned holds that.
    private func finishImage(_ frame: ReplicationFrame, _ epoch: InFlight, path: String, whole: Bool) throws -> (CheckpointManifest, CheckpointImage, synced: ContinuousClock.Instant) {
        let sent: CheckpointManifest
        if whole {
            sent = try MessageCoding.decode(CheckpointManifest.self, frame.payload)
        } else {
            do { sent = try ManifestRelink.summary(frame.payload) } catch { throw ProtocolViolation("undecodable CheckpointManifest payload") }
        }
        guard sent.header == epoch.sent else { throw ProtocolViolation("epoch \(frame.epoch): the manifest's identity differs from its header's") }
        var manifest = sent
        manifest.sequence = epoch.stored.sequence
        manifest.parent = epoch.stored.parent
        // Written as received but for the chain link: no second encoding (`ManifestRelink`).
        guard let encoded = ManifestRelink.relink(frame.payload, parent: manifest.parent, sequence: manifest.sequence) else {
            throw ProtocolViolation("epoch \(frame.epoch): the manifest is not one JSON object with plain, distinct keys")
        }
        var files = epoch.files
        let log = files?.release()
        defer { try? log?.close() }
        let stored: CheckpointManifest
        let partial = epoch.sink.partialPath
        do {
            // Checks, before anything is committed, that the pages received are the pages the
            // primary stored (its page index summary and digests in the manifest); `files.log`
            // is synced with the image's files.
            stored = try epoch.sink.finish(manifest, encoded: encoded, syncing: log.map { [$0] } ?? [])
        } catch {
            // (`abandon` counts the epoch; a failed sink no longer names its partial directory.)
            if let partial { try? FileManager.default.removeItem(atPath: partial) }
            if case ImageError.invalidPages = error {
                throw ProtocolViolation("epoch \(frame.epoch)\(treeInFlight == nil ? "" : ", member \(sent.pid),") discarded: the pages received differ from what the primary stored")
            }
            throw Refused(.storage, "epoch \(frame.epoch): \(error)")
        }
        inFlight = nil
        let synced = ContinuousClock.now
        var problems: [String] = []
        var image: CheckpointImage?
        do {
            // Opening checks the manifest, index and commit record against their digests (the
            // manifest file is the encoding of `stored`, not decoded again). The
            // page data's digests were computed from the bytes as written and equal the
            // primary's (above); reading them back from the device (tens of ms per MB under
            // direct I/O) is kept for full bases, which every later epoch builds on.
            let opened = try CheckpointImage.open(path, written: stored)
            if stored.kind == .full { problems += opened.verify().map(\.description) }
            image = opened
        } catch {
            problems.append("\(error)")
        }
        if !problems.isEmpty {
            try? FileManager.default.removeItem(atPath: path)
            throw ProtocolViolation("epoch \(frame.epoch)\(treeInFlight == nil ? "" : ", member \(stored.pid),") discarded: \(problems[0])")
        }
        return (stored, image!, synced)
    }

    /// An epoch (or tree epoch) committed: statistics and metrics.
    private func recordCommit(_ epoch: Epoch, bytes: UInt64, started: ContinuousClock.Instant, phases: [String: Double]) {
        statistics.record(epoch: committed!, bytes: bytes, duration: ContinuousClock.now - started)
        var phases = phases
        phases["total"] = (ContinuousClock.now - started).inMilliseconds
        statistics.phases.append(EpochPhases(phases))
        metrics.epoch.record(Int64(clamping: epoch.rawValue))
        metrics.epochs.increment()
        metrics.bytes.increment(by: Int64(clamping: bytes))
        metrics.commit.recordNanoseconds(Int64((ContinuousClock.now - started).inMilliseconds * 1e6))
        metrics.ready.record(readiness.ready ? 1 : 0)
    }

    /// Folds the chain into a new full base once it has grown to `compactEvery` images, without
    /// holding up the epochs: the base is written in the background (`Compaction.writeBase`),
    /// and swapped in here, after an acknowledgement, once it is written. Called after each
    /// acknowledgement has gone out (and after the warm clone took the epoch, so that nothing
    /// reads the chain while it is swapped).
    func compactIfDue() {
        guard compactEvery > 0, inFlight == nil, treeInFlight == nil, !closed, let committed else { return }
        let clock = ContinuousClock()
        switch background.withLockedValue({ $0 }) {
        case .writing:
            return
        case .failed(let epoch, let why):
            background.withLockedValue { $0 = .idle }
            logger.warning("standby: compaction at epoch \(epoch) failed, the chain stays as it was: \(why)")
            return
        case .written(let base, let baseGeneration, let started):
            background.withLockedValue { $0 = .idle }
            guard baseGeneration == generation else {
                // A full base was committed since: the chain compacted is not the newest any more.
                directory.remove(base.hidden)
                return
            }
            do {
                try Compaction.swap(directory, base)
                // The replaced chain is outside the newest one now: removed in the background, not
                // before the next frame is read (unlinking 64 redis epochs takes 80–150 ms here).
                removeInBackground([base.hidden] + base.replaced)
                chainLength = max(1, chainLength - base.replaced.count)
                // The images after the base stay as they were; the base is opened from the
                // manifest it was written with.
                chainImages.removeAll { $0.epoch < base.epoch }
                if let index = chainImages.firstIndex(where: { $0.epoch == base.epoch }), let manifest = base.manifest,
                   let opened = try? CheckpointImage.open(directory.imagePath(base.epoch), written: manifest) {
                    chainImages[index].image = opened.asAncestor()
                } else {
                    chainImages = []
                }
                statistics.compactions += 1
                metrics.compactions.increment()
                logger.info("standby: compacted the chain into a full base at epoch \(base.epoch) in \(clock.now - started) (in the background); the chain holds \(chainLength) image(s)")
            } catch {
                logger.warning("standby: compaction at epoch \(base.epoch) failed, the chain stays as it was: \(error)")
                return
            }
            if base.epoch == committed.epoch {
                committedImage = nil
                // The tree image held names the replaced members' images: the base's now.
                if committedTree != nil {
                    do { committedTree = try TreeImage.open(directory.imagePath(committed.epoch)) } catch {
                        logger.warning("standby: the compacted tree epoch \(base.epoch) does not open: \(error)")
                    }
                }
            }
            return
        case .idle:
            break
        }
        guard chainLength >= compactEvery else { return }
        let epoch = committed.epoch, directory = self.directory
        let known: [CheckpointImage]? = chainImages.count == chainLength && chainImages.first?.epoch == epoch ? chainImages.map(\.image) : nil
        let started = clock.now
        // A duplicate of the lock's descriptor: the directory stays locked until the base is
        // written or abandoned, even if this store is gone by then.
        guard let lock = try? lock.duplicate() else { return }
        background.withLockedValue { [generation] in $0 = .writing(epoch, generation: generation, started: started) }
        Task.detached { [background, stopping, generation] in
            defer { try? lock.close() }
            do {
                let base = try await Self.runInBackground("mitosis-standby-compact") {
                    try Compaction.writeBase(directory, epoch: epoch, known: known) { stopping.withLockedValue { $0 } }
                }
                background.withLockedValue { $0 = base.map { .written($0, generation: generation, started: started) } ?? .idle }
            } catch {
                background.withLockedValue { $0 = .failed(epoch, "\(error)") }
            }
        }
    }

    // MARK: Helpers

    /// Runs `body` on a thread of its own at the lowest priority of the normal policy (nice 19;
    /// threads it starts, such as an image's data writer, inherit it): a compaction then takes a
    /// core only when the epoch's receive and commit — and, on a shared host, the protected
    /// process and its primary — leave one free, and is preempted as soon as they wake. Not
    /// `SCHED_IDLE`: that starves it outright on a busy machine, and the chain would grow without
    /// bound.
    static func runInBackground<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await Blocking.run(name) {
            // At the normal priority it only competes with the epochs: nothing to fail for.
            try? Kernel.setCurrentThreadNice(19)
            return try body()
        }
    }

    /// Removes the images `names`, none of them in the newest chain, on a thread of its own; a
    /// crash or a stop meanwhile leaves the rest to the next start (`StandbyDirectory.scan`), so
    /// nothing needs syncing. Holds a duplicate of the directory's lock until done, as the
    /// compaction does, and stops between images once the standby stops. At the normal priority:
    /// it is little CPU, and each image's `rmdir` holds `epochs/`'s lock, which the next commit's
    /// rename needs — a thread at nice 19 waiting for a core there would hold that rename up.
    private func removeInBackground(_ names: [String]) {
        let directory = self.directory
        guard let lock = try? lock.duplicate() else {
            for name in names { directory.remove(name) }
            return
        }
        Task.detached { [stopping] in
            defer { try? lock.close() }
            _ = try? await Blocking.run("mitosis-standby-remove") {
                for name in names where !stopping.withLockedValue({ $0 }) { directory.remove(name) }
            }
        }
    }

    /// Ends the epoch in flight, if any: its partial directory is removed, nothing committed.
    private func abandon(_ reason: String) {
        let tree = treeInFlight, single = inFlight?.epoch
        treeInFlight = nil
        if let epoch = inFlight {
            inFlight = nil
            let partial = epoch.sink.partialPath
            epoch.sink.abort(reason: reason)
            if let partial { try? FileManager.default.removeItem(atPath: partial) }
        } else if tree == nil {
            return
        }
        tree?.writer.abort()
        statistics.abandoned += 1
        metrics.abandoned.increment()
        logger.info("standby: \(tree == nil ? "epoch" : "tree epoch") \(tree?.epoch ?? single ?? .none) abandoned, nothing committed: \(reason)")
    }

    private func violation(_ reason: String) -> StoreReply {
        abandon(reason)
        return .drop(log: reason)
    }

    private func refuse(_ code: Refusal.Code, _ reason: String, _ frame: ReplicationFrame) -> StoreReply {
        let refusal = Refusal(code, reason)
        return .refuse(ReplicationFrame(.refuse, term: term, epoch: frame.epoch, parent: frame.parent, payload: MessageCoding.encode(refusal)),
                       log: refusal.description)
    }

    /// From the manifest alone: opening the chain (`Restorer.init`) read every ancestor's
    /// manifest, a quarter of a second per commit with 64 epochs of redis; the chain itself is
    /// checked at every commit (parent by id, the new image read back).
    static func readiness(of image: CheckpointImage) -> (ready: Bool, reasons: [String]) {
        readiness(of: image.manifest)
    }

    static func readiness(of manifest: CheckpointManifest) -> (ready: Bool, reasons: [String]) {
        let refusals = Restorer.refusals(of: manifest)
        return (refusals.isEmpty, refusals.map(\.description))
    }

    /// The readiness check of the newest epoch, when it was due at its commit and left for after
    /// its acknowledgement: its manifest decoded whole (the commit decoded only its summary).
    /// Called once the acknowledgement is out.
    func checkReadinessIfDue() {
        guard let payload = readinessPending else { return }
        readinessPending = nil
        do {
            readiness = Self.readiness(of: try MessageCoding.decode(CheckpointManifest.self, payload))
        } catch {
            readiness = (false, ["the manifest of epoch \(committed.map { "\($0.epoch)" } ?? "?") does not decode: \(error)"])
        }
        metrics.ready.record(readiness.ready ? 1 : 0)
    }

    /// A tree epoch: the tree's check (what members hold of each other's pipes and memory counts).
    static func readiness(of tree: TreeImage) -> (ready: Bool, reasons: [String]) {
        let refusals = TreeRestorer.refusals(of: tree)
        return (refusals.isEmpty, refusals.map(\.description))
    }
}

/// A refusal raised while handling a frame.
struct Refused: Error {
    var refusal: Refusal
    init(_ code: Refusal.Code, _ reason: String) { refusal = Refusal(code, reason) }
}

/// What the standby has done so far.
public struct StandbyStatistics: Sendable, Equatable {
    public var committed: CommittedEpoch?
    public var epochsCommitted = 0
    public var bytesCommitted: UInt64 = 0
    public var abandoned = 0
    public var connections = 0
    public var compactions = 0
    /// Milliseconds from an epoch's first frame to its commit, the most recent last (bounded).
    public var commitMilliseconds: [Double] = []
    /// Where the time of the recent epochs went (`EpochPhases.standbyNames`).
    public var phases = PhaseHistory()
    public var lastCommit: ContinuousClock.Instant?

    mutating func record(epoch: CommittedEpoch, bytes: UInt64, duration: Duration) {
        committed = epoch
        epochsCommitted += 1
        bytesCommitted += bytes
        commitMilliseconds.append(duration.inMilliseconds)
        if commitMilliseconds.count > 4096 { commitMilliseconds.removeFirst(1024) }
        lastCommit = ContinuousClock.now
    }
}
