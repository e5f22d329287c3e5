import Foundation
import NIOCore
import NIOPosix

/// The primary's connection to its standby, used from blocking code only: the checkpoint
/// session's sink runs on the session's own thread, which may wait on the network (never an
/// event loop, never the cooperative pool). NIO does the socket work; frames that arrive are
/// queued for `receive`.
final class PrimaryConnection: @unchecked Sendable {
    private let channel: Channel
    private let mailbox: Mailbox

    private init(channel: Channel, mailbox: Mailbox) {
        self.channel = channel
        self.mailbox = mailbox
    }

    /// Connects to `host:port` within `timeout`. Blocking.
    static func connect(host: String, port: Int, timeout: Duration) throws -> PrimaryConnection {
        let mailbox = Mailbox()
        let seconds = timeout.components.seconds
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(max(1, seconds)))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ReplicationFrameDecoder(accepting: [.state, .ack, .refuse])))
                    try channel.pipeline.syncOperations.addHandler(MailboxHandler(mailbox))
                }
            }
        do {
            let channel = try bootstrap.connect(host: host, port: port).wait()
            return PrimaryConnection(channel: channel, mailbox: mailbox)
        } catch {
            throw ReplicationError.connection("cannot connect to \(host):\(port): \(error)")
        }
    }

    /// Sends `frame`, returning once the kernel took it (TCP flow control blocks here).
    func send(_ frame: ReplicationFrame) throws {
        try enqueue(frame)
        try flush()
    }

    /// Frames encoded and not yet handed to the event loop (`enqueue`), and the type of the last.
    private var pending: ByteBuffer?
    private var pendingType: FrameType?
    /// The last batch handed to the event loop and not yet waited for (`handOver`), with its type.
    private var inFlight: (write: EventLoopFuture<Void>, type: FrameType?)?
    private let pendingLock = NSLock()
    /// Frames are handed to the event loop in batches of about this many bytes: each hand-over
    /// is a wait for another thread (an epoch of redis is hundreds of small page runs). One
    /// batch is in flight at most — the next is encoded while the event loop writes it — so TCP's
    /// flow control stays the bound on what is buffered.
    static let batchBytes = 1 << 20

    /// Adds `frame` to the batch being built; sends the batch once it is large enough.
    func enqueue(_ frame: ReplicationFrame) throws {
        try enqueue(frame.type) { frame.encode(into: &$0) }
    }

    /// Adds a frame whose payload is `payload`'s pieces (`ReplicationFrame.encode(_:term:epoch:parent:payload:into:)`).
    func enqueue(_ type: FrameType, term: Term, epoch: Epoch, parent: Epoch, payload: [UnsafeRawBufferPointer]) throws {
        try enqueue(type) { ReplicationFrame.encode(type, term: term, epoch: epoch, parent: parent, payload: payload, into: &$0) }
    }

    private func enqueue(_ type: FrameType, _ encode: (inout ByteBuffer) -> Void) throws {
        let full = pendingLock.withLock {
            if pending == nil { pending = channel.allocator.buffer(capacity: Self.batchBytes + 64 << 10) }
            encode(&pending!)
            pendingType = type
            return pending!.readableBytes >= Self.batchBytes
        }
        if full { try handOver() }
    }

    /// Sends the frames enqueued, returning once the kernel took them.
    func flush() throws {
        try handOver()
        try awaitInFlight()
    }

    /// Hands the frames enqueued to the event loop once the batch before them was written, and
    /// returns without waiting for their write: the epoch's last frames are written while the
    /// checkpoint thread goes on (the standby's acknowledgement comes only after them). A
    /// failed write closes the connection, which ends every wait for an answer (`receive`).
    func handOver() throws {
        try awaitInFlight()
        let (batch, type) = pendingLock.withLock {
            defer { pending = nil }
            return (pending, pendingType)
        }
        guard let batch else { return }
        let write = channel.writeAndFlush(batch)
        let mailbox = self.mailbox
        write.whenFailure { error in mailbox.end(Self.sendFailure(type, error)) }
        pendingLock.withLock { inFlight = (write, type) }
    }

    /// Waits for the batch in flight, if any, to be written.
    private func awaitInFlight() throws {
        guard let (write, type) = pendingLock.withLock({ () -> (EventLoopFuture<Void>, FrameType?)? in
            defer { inFlight = nil }
            return inFlight
        }) else { return }
        do {
            try write.wait()
        } catch {
            throw Self.sendFailure(type, error)
        }
    }

    private static func sendFailure(_ type: FrameType?, _ error: any Error) -> ReplicationError {
        ReplicationError.connection("sending a \(type.map { "\($0)" } ?? "") frame failed: \(error)")
    }

    /// The next frame from the standby, waiting at most `timeout`.
    func receive(timeout: Duration) throws -> ReplicationFrame {
        try mailbox.take(timeout: timeout)
    }

    /// Whether `receive` would return (or throw) without waiting.
    var hasAnswer: Bool { mailbox.isReady }

    func close() {
        channel.close(promise: nil)
    }
}

/// Frames (or the end of the connection) from the event loop to the blocked sender.
final class Mailbox: @unchecked Sendable {
    private let condition = NSCondition()
    private var frames: [ReplicationFrame] = []
    private var ended: (any Error)?

    func put(_ frame: ReplicationFrame) {
        condition.withLock {
            frames.append(frame)
            condition.broadcast()
        }
    }

    func end(_ error: any Error) {
        condition.withLock {
            if ended == nil { ended = error }
            condition.broadcast()
        }
    }

    /// A frame, or the end, is there to take.
    var isReady: Bool { condition.withLock { !frames.isEmpty || ended != nil } }

    func take(timeout: Duration) throws -> ReplicationFrame {
        let deadline = Date().addingTimeInterval(Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18)
        condition.lock()
        defer { condition.unlock() }
        while frames.isEmpty {
            if let ended { throw ended }
            guard condition.wait(until: deadline) else {
                throw ReplicationError.connection("no answer from the standby within \(timeout)")
            }
        }
        return frames.removeFirst()
    }
}

private final class MailboxHandler: ChannelInboundHandler {
    typealias InboundIn = ReplicationFrame
    private let mailbox: Mailbox

    init(_ mailbox: Mailbox) { self.mailbox = mailbox }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        mailbox.put(unwrapInboundIn(data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        mailbox.end(error is ProtocolViolation ? ReplicationError.protocolViolation("\(error)") : ReplicationError.connection("\(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        mailbox.end(ReplicationError.connection("the standby closed the connection"))
        context.fireChannelInactive()
    }
}
