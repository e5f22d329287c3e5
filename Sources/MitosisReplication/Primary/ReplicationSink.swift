import Foundation
import MitosisImage

/// A checkpoint sink that sends one epoch to the standby: `imageBegin`, `imagePages`…, the
/// epoch's data-file changes, `imageFinish`, then waits for the standby's acknowledgement. A
/// checkpoint therefore completes only once its epoch is durable on the standby; a refusal or
/// a lost connection fails it (and `CheckpointSession` keeps the dirty pages for the next one).
///
/// Runs on the checkpoint session's own thread, which it may block on the network.
final class ReplicationSink: CheckpointSink, @unchecked Sendable {
    private let connection: PrimaryConnection
    private let term: Term
    private let epoch: Epoch
    private let parent: Epoch
    private let acknowledgementTimeout: Duration
    /// Data-file changes to send before the finish (computed at the freeze).
    private let files: @Sendable (CheckpointManifest) throws -> [(FileDelta, [UInt8])]
    private let lock = NSLock()
    private var builder: PageRunBuilder?
    private var header: CheckpointHeader?
    private var closed = false
    private(set) var bytesSent: UInt64 = 0
    /// When each phase of the epoch ended (`EpochPhases`).
    private let clock = ContinuousClock()
    private var began: ContinuousClock.Instant?
    private var captured: ContinuousClock.Instant?
    private(set) var phases = EpochPhases()
    /// The manifest, once sent whole: the standby may have committed the epoch even when its
    /// acknowledgement never arrives (`EpochHistory`).
    private(set) var sentManifest: CheckpointManifest?

    init(connection: PrimaryConnection, term: Term, epoch: Epoch, parent: Epoch, acknowledgementTimeout: Duration,
         files: @escaping @Sendable (CheckpointManifest) throws -> [(FileDelta, [UInt8])]) {
        self.connection = connection
        self.term = term
        self.epoch = epoch
        self.parent = parent
        self.acknowledgementTimeout = acknowledgementTimeout
        self.files = files
    }

    private func frame(_ type: FrameType, _ payload: [UInt8]) -> ReplicationFrame {
        ReplicationFrame(type, term: term, epoch: epoch, parent: parent, payload: payload)
    }

    private func send(_ type: FrameType, _ payload: [UInt8]) throws {
        try connection.send(frame(type, payload))
        bytesSent += UInt64(payload.count + ReplicationFrame.headerSize)
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
                var payload: [UInt8] = []
                let end = min(offset + chunk, bytes.count)
                payload.reserveCapacity(8 + end - offset)
                payload.appendLittleEndian(address + UInt64(offset))
                payload.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]))
                try send(.imagePages, payload)
            }
        }
    }

    @discardableResult
    func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest {
        try lock.withLock {
            guard var builder, let header, !closed else { throw ImageError.sinkState("finish before begin or after the end") }
            guard manifest.header == header else { throw ImageError.sinkState("the manifest's identity differs from the header's") }
            closed = true
            let finishing = clock.now
            if captured == nil { captured = finishing }
            let (index, runs, data) = try builder.finish()
            let stored = builder.complete(manifest, runs: runs, index: FileDigest(size: UInt64(index.count), xxh64: Checksum.xxh64(index)), data: data)
            for (delta, bytes) in try files(stored) {
                var payload: [UInt8] = MessageCoding.encode(delta)
                payload.append(0)
                payload.append(contentsOf: bytes)
                try send(.fileDelta, payload)
            }
            try send(.imageFinish, MessageCoding.encode(stored))
            sentManifest = stored
            let sent = clock.now
            let answer = try connection.receive(timeout: acknowledgementTimeout)
            if let began, let captured {
                let acknowledged = clock.now
                phases = EpochPhases(["capture": milliseconds(captured - began), "send": milliseconds(finishing - captured),
                                      "files": milliseconds(sent - finishing), "acknowledgement": milliseconds(acknowledged - sent),
                                      "total": milliseconds(acknowledged - began)])
            }
            switch answer.type {
            case .ack where answer.epoch == epoch && answer.payload == Array(stored.id.utf8):
                return stored
            case .refuse:
                throw ReplicationError.refused((try? MessageCoding.decode(Refusal.self, answer.payload)) ?? Refusal(.malformed, "an undecodable refusal"))
            default:
                throw ReplicationError.protocolViolation("expected the acknowledgement of epoch \(epoch), got \(answer.type) of epoch \(answer.epoch)")
            }
        }
    }

    func abort(reason: String) {
        lock.withLock {
            guard !closed else { return }
            closed = true
            if builder != nil { try? send(.imageAbort, Array(reason.utf8.prefix(4096))) }
        }
    }
}
