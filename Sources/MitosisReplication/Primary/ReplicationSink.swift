import Foundation
import MitosisImage
import MitosisModel

/// A checkpoint sink that sends one epoch to every connected standby: `imageBegin`,
/// `imagePages`…, the epoch's data-file changes, `imageFinish`, then waits for each standby's
/// acknowledgement (in `finish`, or later in `settle` when deferred). A refusal of an older term
/// fails the epoch, and so does losing every standby (`CheckpointSession` then keeps the dirty
/// pages for the next one).
///
/// A standby that fails mid-epoch (lost connection, no acknowledgement in time, a refusal of
/// another kind) is left out of the rest of the epoch and named in `failed`: the others go on.
///
/// Runs on the checkpoint session's own thread, which it may block on the network: frames go
/// to the standbys one after the other, so the slowest standby paces the epoch.
///
/// A deferred sink (`deferred`) returns from `finish` once the epoch is sent; its
/// acknowledgements are collected by `settle`, before the next epoch's freeze
/// (`CheckpointOptions.beforeFreeze`): the next pre-copy overlaps the standbys' commit. The
/// checkpoint session then counts the epoch as taken before it is acknowledged; should the
/// acknowledgement never come, the next checkpoint fails before its freeze, and the epoch
/// history resynchronises the standbys (`CheckpointParent.earlier`).
final class ReplicationSink: CheckpointSink, @unchecked Sendable {
    /// One standby's connection, as this epoch sees it.
    struct Target {
        let name: String
        let connection: PrimaryConnection
        var failure: (any Error)?
        var acknowledged = false
    }

    private let term: Term
    private let epoch: Epoch
    private let parent: Epoch
    private let acknowledgementTimeout: Duration
    private let deferred: Bool
    /// The outcome of the acknowledgements, once collected (`settle`), and when.
    private var outcome: Result<Void, any Error>?
    private(set) var acknowledgedAt: ContinuousClock.Instant?
    private var sentAt: ContinuousClock.Instant?
    /// Data-file changes to send before the finish (computed at the freeze).
    private let files: @Sendable (CheckpointManifest) throws -> [(FileDelta, [UInt8])]
    private let lock = NSLock()
    private var targets: [Target]
    /// A tree member's sink keeps its frames here instead of sending them: the tree epoch is
    /// sent whole once every member's checkpoint is done (`sendTree`).
    private(set) var buffered: [ReplicationFrame]?
    private var builder: PageRunBuilder?
    private var header: CheckpointHeader?
    private var closed = false
    private(set) var bytesSent: UInt64 = 0
    /// When each phase of the epoch ended (`EpochPhases`).
    private let clock = ContinuousClock()
    private var began: ContinuousClock.Instant?
    private var captured: ContinuousClock.Instant?
    private(set) var phases = EpochPhases()
    /// The manifest, once sent whole: a standby may have committed the epoch even when its
    /// acknowledgement never arrives (`EpochHistory`).
    private(set) var sentManifest: CheckpointManifest?
    /// Kept from epoch to epoch by the session: the manifest is encoded reusing the bytes of
    /// the parts equal to the previous epoch's (`JSONMemo`).
    private let manifestMemo: JSONMemo?

    init(targets: [(name: String, connection: PrimaryConnection)], term: Term, epoch: Epoch, parent: Epoch, acknowledgementTimeout: Duration,
         deferred: Bool = false, manifestMemo: JSONMemo? = nil, files: @escaping @Sendable (CheckpointManifest) throws -> [(FileDelta, [UInt8])]) {
        self.manifestMemo = manifestMemo
        self.targets = targets.map { Target(name: $0.name, connection: $0.connection) }
        self.term = term
        self.epoch = epoch
        self.parent = parent
        self.acknowledgementTimeout = acknowledgementTimeout
        self.deferred = deferred
        self.files = files
    }

    /// A sink for one member of a tree epoch: its frames are kept, not sent, and its finish
    /// waits for nothing.
    static func member(term: Term, epoch: Epoch, parent: Epoch) -> ReplicationSink {
        let sink = ReplicationSink(targets: [], term: term, epoch: epoch, parent: parent, acknowledgementTimeout: .zero) { _ in [] }
        sink.buffered = []
        return sink
    }

    /// The standbys the epoch went to.
    var targetNames: [String] { lock.withLock { targets.map(\.name) } }
    /// Whether the acknowledgements were collected (`settle`, or a `finish` not deferred).
    var isSettled: Bool { lock.withLock { outcome != nil } }
    /// The standbys that acknowledged the epoch, and those that failed during it (with why).
    var acknowledgedBy: [String] { lock.withLock { targets.filter(\.acknowledged).map(\.name) } }
    var failed: [(name: String, error: any Error)] {
        lock.withLock { targets.compactMap { target in target.failure.map { (target.name, $0) } } }
    }

    private func frame(_ type: FrameType, _ payload: [UInt8]) -> ReplicationFrame {
        ReplicationFrame(type, term: term, epoch: epoch, parent: parent, payload: payload)
    }

    /// Sends to every standby still in the epoch; throws only when none is left.
    private func send(_ type: FrameType, _ payload: [UInt8]) throws {
        try send(frame(type, payload))
    }

    private func send(_ frame: ReplicationFrame) throws {
        let payload = frame.payload
        if buffered != nil {
            buffered!.append(frame)
            bytesSent += UInt64(payload.count + ReplicationFrame.headerSize)
            return
        }
        for index in targets.indices where targets[index].failure == nil {
            do { try targets[index].connection.enqueue(frame) } catch { targets[index].failure = error }
        }
        try requireOne()
        bytesSent += UInt64(payload.count + ReplicationFrame.headerSize)
    }

    /// A frame whose payload is `parts` one after the other, encoded from where they are (no
    /// payload array: pages go from the staging memory into the send buffer) unless kept.
    private func send(_ type: FrameType, parts: [UnsafeRawBufferPointer]) throws {
        guard buffered == nil else {
            var payload: [UInt8] = []
            payload.reserveCapacity(parts.reduce(0) { $0 + $1.count })
            for part in parts { payload.append(contentsOf: part) }
            return try send(type, payload)
        }
        for index in targets.indices where targets[index].failure == nil {
            do {
                try targets[index].connection.enqueue(type, term: term, epoch: epoch, parent: parent, payload: parts)
            } catch {
                targets[index].failure = error
            }
        }
        try requireOne()
        bytesSent += UInt64(parts.reduce(0) { $0 + $1.count } + ReplicationFrame.headerSize)
    }

    /// Hands what every standby still in the epoch has enqueued to the network (frames go in
    /// batches: `PrimaryConnection.enqueue`), without waiting for the last batch's write (the
    /// acknowledgement waited for next comes after it); throws only when none is left.
    private func flush() throws {
        guard buffered == nil else { return }
        for index in targets.indices where targets[index].failure == nil {
            do { try targets[index].connection.handOver() } catch { targets[index].failure = error }
        }
        try requireOne()
    }

    private func requireOne() throws {
        guard !targets.contains(where: { $0.failure == nil }) else { return }
        if let refusal = targets.lazy.compactMap({ $0.failure as? ReplicationError }).first(where: \.isNewerPrimary) { throw refusal }
        throw targets.first?.failure ?? ReplicationError.connection("no standby to send epoch \(epoch) to")
    }

    func begin(_ header: CheckpointHeader) throws {
        try lock.withLock {
            guard builder == nil, !closed else { throw ImageError.sinkState("begin called twice") }
            try checkHeader(header)
            began = clock.now
            self.header = header
            builder = PageRunBuilder(pageSize: header.pageSize)
            try send(.imageBegin, MessageCoding.encode(header))
        }
    }

    func writePages(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        try lock.withLock {
            guard var builder, !closed else { throw ImageError.sinkState("pages before begin or after the end") }
            try validateRun(address: address, count: bytes.count, pageSize: builder.pageSize)
            if captured == nil { captured = clock.now }
            try builder.add(address: address, bytes) { _ throws(ImageError) in }
            self.builder = builder
            let chunk = ImageFormat.maxRunPages * builder.pageSize
            for offset in stride(from: 0, to: bytes.count, by: chunk) {
                let end = min(offset + chunk, bytes.count)
                var at: [UInt8] = []
                at.appendLittleEndian(address + UInt64(offset))
                try at.withUnsafeBytes { at in
                    try send(.imagePages, parts: [at, UnsafeRawBufferPointer(rebasing: bytes[offset..<end])])
                }
            }
        }
    }

    @discardableResult
    func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest {
        try lock.withLock {
            guard var builder, let header, !closed else { throw ImageError.sinkState("finish before begin or after the end") }
            guard manifest.header == header else { throw ImageError.sinkState("the manifest's identity differs from the header's") }
            // A checkpoint that could not record what a restore needs (the process exited while
            // it was taken, say) is no epoch: committed, it would be the newest and unpromotable.
            guard manifest.restore != nil else { throw ReplicationError.notRestorable("epoch \(epoch): the checkpoint recorded no restore state") }
            closed = true
            let finishing = clock.now
            if captured == nil { captured = finishing }
            let (index, runs, data) = try builder.finish()
            let stored = builder.complete(manifest, runs: runs, index: FileDigest(size: UInt64(index.count), xxh64: Checksum.xxh64(index)), data: data)
            let indexed = clock.now
            let deltas = try files(stored)
            let read = clock.now
            try send(files: deltas)
            let encoded = MessageCoding.encode(stored, memo: manifestMemo)
            let described = clock.now
            try send(.imageFinish, encoded)
            try flush()
            sentManifest = stored
            if buffered != nil { return stored }
            let sent = clock.now
            sentAt = sent
            if let began, let captured {
                phases = EpochPhases(["capture": (captured - began).inMilliseconds, "send": (finishing - captured).inMilliseconds,
                                      "files": (sent - finishing).inMilliseconds, "index": (indexed - finishing).inMilliseconds,
                                      "data files": (read - indexed).inMilliseconds, "manifest": (described - read).inMilliseconds,
                                      "flush": (sent - described).inMilliseconds])
            }
            if !deferred { try collect() }
            return stored
        }
    }

    /// Whether collecting the acknowledgements (`settle`) would wait for none: every standby
    /// still in the epoch has answered, or it was collected already.
    var answered: Bool {
        lock.withLock { outcome != nil || targets.allSatisfy { $0.failure != nil || $0.connection.hasAnswer } }
    }

    /// Collects the acknowledgements of the epoch sent whole (once; later calls give the same
    /// outcome): throws when no standby acknowledged it.
    func settle() throws {
        try lock.withLock {
            if outcome == nil {
                guard sentAt != nil, sentManifest != nil else { throw ImageError.sinkState("acknowledgements of an epoch not sent") }
                do { try collect() } catch {}
            }
            try outcome!.get()
        }
    }

    /// Under the lock: waits for the acknowledgements, records the outcome and the phases.
    private func collect() throws {
        let result = Result<Void, any Error> { try collectAcknowledgements(of: sentManifest!.id) }
        let acknowledged = clock.now
        acknowledgedAt = acknowledged
        outcome = result
        if let began, let sentAt {
            phases["acknowledgement"] = (acknowledged - sentAt).inMilliseconds
            phases["total"] = (acknowledged - began).inMilliseconds
        }
        try result.get()
    }

    /// Leaves the standbys `names` out of the rest of this epoch (they failed the epoch it
    /// builds on); throws when none is left.
    func leaveOut(_ names: Set<String>, because reason: String) throws {
        try lock.withLock {
            for index in targets.indices where targets[index].failure == nil && names.contains(targets[index].name) {
                targets[index].failure = ReplicationError.connection(reason)
            }
            try requireOne()
        }
    }

    /// One `fileDelta` frame per change: the `FileDelta` JSON, a NUL, the bytes.
    private func send(files: [(FileDelta, [UInt8])]) throws {
        for (delta, bytes) in files {
            var head: [UInt8] = MessageCoding.encode(delta)
            head.append(0)
            try head.withUnsafeBytes { head in
                try bytes.withUnsafeBytes { try send(.fileDelta, parts: [head, $0]) }
            }
        }
    }

    /// Sends a whole tree epoch — `treeBegin`, each member's frames (kept by its `member` sink),
    /// the tree's data-file changes, `treeFinish` with the tree's manifest — and waits for every
    /// standby's acknowledgement of the manifest's id. `captured`: how long the members'
    /// checkpoints took.
    func sendTree(members: TreeEpochMembers, images: [[ReplicationFrame]], files: [(FileDelta, [UInt8])], manifest: TreeManifest,
                  captured: Duration) throws {
        try lock.withLock {
            guard !closed, buffered == nil else { throw ImageError.sinkState("a tree epoch sent twice") }
            closed = true
            let sending = clock.now
            try send(.treeBegin, MessageCoding.encode(members))
            for frames in images {
                for frame in frames {
                    guard frame.epoch == epoch, frame.parent == parent else { throw ImageError.sinkState("a member frame of another epoch") }
                    try send(frame)
                }
            }
            try send(files: files)
            try send(.treeFinish, MessageCoding.encode(manifest))
            try flush()
            let sent = clock.now
            sentAt = sent
            try collectAcknowledgements(of: manifest.id)
            let acknowledged = clock.now
            acknowledgedAt = acknowledged
            outcome = .success(())
            phases = EpochPhases(["capture": captured.inMilliseconds, "send": (sent - sending).inMilliseconds,
                                  "acknowledgement": (acknowledged - sent).inMilliseconds,
                                  "total": (captured + (acknowledged - sending)).inMilliseconds])
        }
    }

    /// Every standby has the whole epoch; their commits run side by side while the
    /// acknowledgements (of the image or tree manifest `id`) are collected one after the other.
    private func collectAcknowledgements(of id: String) throws {
        for index in targets.indices where targets[index].failure == nil {
            do {
                let answer = try targets[index].connection.receive(timeout: acknowledgementTimeout)
                switch answer.type {
                case .ack where answer.epoch == epoch && answer.payload == Array(id.utf8):
                    targets[index].acknowledged = true
                case .refuse:
                    throw ReplicationError.refused((try? MessageCoding.decode(Refusal.self, answer.payload)) ?? Refusal(.malformed, "an undecodable refusal"))
                default:
                    throw ReplicationError.protocolViolation("expected the acknowledgement of epoch \(epoch), got \(answer.type) of epoch \(answer.epoch)")
                }
            } catch {
                targets[index].failure = error
            }
        }
        // A standby that has seen a newer term means another primary: the whole session stops.
        if let refusal = targets.lazy.compactMap({ $0.failure as? ReplicationError }).first(where: \.isNewerPrimary) { throw refusal }
        try requireOne()
    }

    func abort(reason: String) {
        lock.withLock {
            guard !closed else { return }
            closed = true
            guard builder != nil else { return }
            // `send` hands over what was enqueued before the abort too.
            for target in targets where target.failure == nil { try? target.connection.send(frame(.imageAbort, Array(reason.utf8.prefix(4096)))) }
        }
    }
}

extension ReplicationError {
    /// A standby refused because another primary exists (an older term, or its directory was promoted).
    var isNewerPrimary: Bool {
        if case .refused(let refusal) = self { return refusal.code == .olderTerm || refusal.code == .promoted }
        if case .newerTerm = self { return true }
        return false
    }
}
