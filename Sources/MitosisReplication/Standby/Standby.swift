import Logging
import MitosisKernel
import NIOCore
import NIOPosix
import ServiceLifecycle

/// How a standby serves.
public struct StandbyOptions: Sendable {
    /// The address and port to listen on.
    public var host: String
    public var port: Int
    /// The standby directory (Docs/replication.md, "Standby directory").
    public var directory: String
    /// Fold the chain into a new full base once it holds this many images (0: never).
    public var compactEvery: Int = 64
    /// Keep a warm clone (Docs/replication.md, "Warm clone"); nil: promotion restores cold.
    public var warm: WarmOptions?
    /// Refuse primaries of older terms than this one from the start (the failover daemon's
    /// leader term, given before the new primary's first frame arrives); recorded in `TERM`.
    public var minimumTerm = Term(0)

    public init(host: String, port: Int, directory: String) {
        self.host = host
        self.port = port
        self.directory = directory
    }
}

/// What a standby reports: the newest committed epoch, readiness, counters.
public struct StandbyStatus: Sendable {
    public var term: Term
    public var ready: Bool
    public var reasons: [String]
    public var statistics: StandbyStatistics
    /// The warm clone, when the standby keeps one.
    public var warm: WarmStatus?
}

/// The receiving end of replication, as a service: listens for a primary, checks every frame,
/// commits each epoch durably and only then acknowledges it (Docs/replication.md).
///
/// Frames are decoded on NIO's event loop; everything that touches the disk runs on the
/// store's own thread. Reading pauses while the store is busy (NIOAsyncChannel's
/// back-pressure), so a slow disk slows the primary's epochs instead of filling memory.
public final class Standby: Service, Sendable {
    public let options: StandbyOptions
    let store: StandbyStore
    let warm: WarmClone?
    let logger: Logger
    /// Ends `run` once the standby has promoted its process.
    private let promoted = AsyncStream<Void>.makeStream()

    /// Opens and locks the standby directory (removing work a previous run left) and finds
    /// its newest committed epoch.
    public init(options: StandbyOptions, logger: Logger = Logger(label: "mitosis.standby")) async throws {
        self.options = options
        self.logger = logger
        let directory = StandbyDirectory(options.directory)
        store = try await Blocking.run("mitosis-standby-open") {
            try StandbyStore(directory: directory, compactEvery: options.compactEvery, minimumTerm: options.minimumTerm,
                             decodesEveryManifest: options.warm != nil, logger: logger)
        }
        warm = options.warm.map { WarmClone(options: $0, filesDirectory: directory.warmFilesPath, logger: logger) }
    }

    public func status() async -> StandbyStatus {
        let (term, readiness, statistics) = await (store.term, store.readiness, store.statistics)
        return StandbyStatus(term: term, ready: readiness.ready, reasons: readiness.reasons, statistics: statistics,
                             warm: await warm?.currentStatus())
    }

    /// Brings the process to life from the newest committed epoch, from the warm clone when it
    /// holds it, cold otherwise; then `run` ends. The directory must be fenced first
    /// (`Promotion.promote` does both: call that).
    /// `endingRun` false: the caller ends `run` itself (`endRun`), once it has answered.
    func promote(endingRun: Bool = true) async throws -> PromotionResult {
        defer { if endingRun { endRun() } }
        return try await Promotion.promote(servedBy: self)
    }

    func endRun() { promoted.continuation.finish() }

    /// Serves until cancelled or shut down gracefully; then abandons the epoch in flight.
    public func run() async throws {
        let decoderTypes: Set<FrameType> = [.hello, .imageBegin, .imagePages, .fileDelta, .imageFinish, .imageAbort, .treeBegin, .treeFinish]
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A primary that stops sending still gets the answers to what it sent.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: options.host, port: options.port) { (channel: any Channel) -> EventLoopFuture<Connection> in
                channel.eventLoop.makeCompletedFuture { () throws -> Connection in
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ReplicationFrameDecoder(accepting: decoderTypes)))
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        let bound = server.channel.localAddress?.port ?? options.port
        logger.info("standby: listening on \(options.host):\(bound), images in \(options.directory)\(warm == nil ? "" : ", warm clone on")")
        let control = await StandbyControl.bind(self)
        StandbyControl.register(self)
        defer { StandbyControl.unregister(self) }
        if let warm, let committed = await store.committed {
            // A restarted standby prepares its husk from what it holds already.
            let path = store.directory.imagePath(committed.epoch)
            Task { await warm.committed(committed.epoch, image: nil, path: path) }
        }
        await cancelWhenGracefulShutdown { () async -> Void in
            await withTaskGroup(of: Void.self) { (group: inout TaskGroup<Void>) async -> Void in
                group.addTask { await self.acceptPrimaries(server) }
                if let control { group.addTask { await StandbyControl.serve(control, standby: self) } }
                group.addTask { for await _ in self.promoted.stream {} }
                await group.next()
                group.cancelAll()
            }
        }
        await store.close()
        await warm?.discard()
        StandbyControl.removeSocket(self)
        logger.info("standby: stopped")
    }

    private func acceptPrimaries(_ server: NIOAsyncChannel<Connection, Never>) async {
        await withDiscardingTaskGroup(returning: Void.self) { (group: inout DiscardingTaskGroup) async -> Void in
            do {
                try await server.executeThenClose { (connections: NIOAsyncChannelInboundStream<Connection>) async throws -> Void in
                    for try await connection in connections {
                        group.addTask { await self.serve(connection) }
                    }
                }
            } catch {
                if !Task.isCancelled { self.logger.error("standby: listening failed: \(error)") }
            }
            group.cancelAll()
        }
    }

    typealias Connection = NIOAsyncChannel<ReplicationFrame, ByteBuffer>

    private func serve(_ connection: Connection) async {
        let peer = connection.channel.remoteAddress.map { "\($0)" } ?? "unknown peer"
        let token = await store.connect()
        do {
            try await connection.executeThenClose { (inbound: NIOAsyncChannelInboundStream<ReplicationFrame>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> Void in
                for try await frame in inbound {
                    switch await store.receive(frame, connection: token) {
                    case .none:
                        continue
                    case .send(let reply):
                        try await outbound.write(Self.buffer(reply, connection.channel.allocator))
                        guard reply.type == .ack else { continue }
                        // Before the next frame is read: the warm clone takes the epoch while its
                        // files are the ones just checked (a compaction replaces them).
                        if let warm { await warm.committed(reply.epoch, image: await store.committedImage, path: store.directory.imagePath(reply.epoch)) }
                        await store.checkReadinessIfDue()
                        await store.compactIfDue()
                    case .refuse(let reply, let why):
                        logger.warning("standby: refused \(peer): \(why); connection closed")
                        try await outbound.write(Self.buffer(reply, connection.channel.allocator))
                        return
                    case .drop(let why):
                        logger.warning("standby: dropped \(peer): \(why); nothing committed")
                        return
                    }
                }
                logger.info("standby: \(peer) disconnected")
            }
        } catch let violation as ProtocolViolation {
            logger.warning("standby: dropped \(peer): \(violation.reason); nothing committed")
        } catch {
            if !Task.isCancelled { logger.info("standby: \(peer) connection ended: \(error)") }
        }
        await store.disconnect(token)
    }

    static func buffer(_ frame: ReplicationFrame, _ allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: ReplicationFrame.headerSize + frame.payload.count)
        frame.encode(into: &buffer)
        return buffer
    }
}
