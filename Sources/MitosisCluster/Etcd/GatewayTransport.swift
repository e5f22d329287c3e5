import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// HTTP/1.1 to etcd's JSON gateway: a POST with a JSON body, one TCP connection per call.
///
/// A connection per call keeps failure handling trivial: nothing is ever half-used after a
/// timeout or a partition, and the cost (a TCP handshake on the hosts' network, well under a
/// millisecond) is small beside a keepalive period of hundreds of milliseconds.
struct GatewayTransport: Sendable {
    let group: any EventLoopGroup

    struct Response: Sendable {
        let status: Int
        let body: [UInt8]
    }

    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// POSTs `body` to `path` and collects the whole answer, all within `timeout`: connecting,
    /// sending and reading. An answer over `limit` bytes is refused as it arrives.
    func post(_ endpoint: EtcdEndpoint, path: String, body: [UInt8], operation: String,
              timeout: Duration, limit: Int) async throws -> Response {
        let expired = Flag()
        do {
            let connection = try await connect(endpoint, timeout: timeout)
            let timer = connection.channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) {
                expired.set()
                connection.channel.close(promise: nil)
            }
            defer { timer.cancel() }
            return try await connection.executeThenClose { inbound, outbound in
                // A server may answer (an error, say) and close before it has read the whole
                // request: a failed write still reads whatever answer arrived.
                var sendError: (any Error)?
                do { try await Self.send(endpoint, path: path, body: body, to: outbound) } catch { sendError = error }
                var status = 0
                var collected: [UInt8] = []
                for try await part in inbound {
                    switch part {
                    case .head(let head): status = Int(head.status.code)
                    case .body(let buffer):
                        guard collected.count + buffer.readableBytes <= limit else {
                            throw EtcdError.tooLarge(endpoint: endpoint.description, operation: operation, limit: limit)
                        }
                        collected += buffer.readableBytesView
                    case .end: return Response(status: status, body: collected)
                    }
                }
                throw sendError ?? EtcdError.unreachable(endpoint: endpoint.description, reason: "connection closed before the answer ended")
            }
        } catch {
            throw Self.classify(error, endpoint: endpoint, operation: operation, timeout: timeout, expired: expired.isSet)
        }
    }

    /// POSTs `body` to a streaming endpoint (`/v3/watch`) and hands each newline-delimited
    /// message to `onMessage` until the stream ends, `onMessage` throws, or the task is
    /// cancelled. Connecting must succeed within `connectTimeout`; a message over `limit` bytes
    /// ends the stream with `tooLarge`.
    func stream(_ endpoint: EtcdEndpoint, path: String, body: [UInt8], operation: String,
                connectTimeout: Duration, limit: Int,
                onMessage: @Sendable ([UInt8]) async throws -> Void) async throws {
        do {
            let connection = try await connect(endpoint, timeout: connectTimeout)
            let channel = connection.channel
            try await withTaskCancellationHandler {
                try await connection.executeThenClose { inbound, outbound in
                    try await Self.send(endpoint, path: path, body: body, to: outbound)
                    var pending: [UInt8] = []
                    for try await part in inbound {
                        switch part {
                        case .head(let head):
                            guard head.status == .ok else {
                                throw EtcdError.rejected(endpoint: endpoint.description, operation: operation,
                                                         httpStatus: Int(head.status.code), code: -1, message: "\(head.status)")
                            }
                        case .body(let buffer):
                            pending += buffer.readableBytesView
                            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                                let message = Array(pending[..<newline])
                                pending.removeSubrange(...newline)
                                if !message.isEmpty { try await onMessage(message) }
                            }
                            guard pending.count <= limit else {
                                throw EtcdError.tooLarge(endpoint: endpoint.description, operation: operation, limit: limit)
                            }
                        case .end: return
                        }
                    }
                }
            } onCancel: {
                channel.close(promise: nil)
            }
            try Task.checkCancellation()
        } catch {
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            throw Self.classify(error, endpoint: endpoint, operation: operation, timeout: connectTimeout, expired: false)
        }
    }

    private func connect(_ endpoint: EtcdEndpoint, timeout: Duration) async throws -> Connection {
        try await ClientBootstrap(group: group)
            .connectTimeout(TimeAmount(timeout))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: endpoint.host, port: endpoint.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
    }

    private static func send(_ endpoint: EtcdEndpoint, path: String, body: [UInt8],
                             to outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>) async throws {
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "Host", value: "\(endpoint.host):\(endpoint.port)")
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: "\(body.count)")
        head.headers.add(name: "Connection", value: "close")
        try await outbound.write(.head(head))
        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body))))
        try await outbound.write(.end(nil))
    }

    /// One `EtcdError` for whatever NIO or the socket threw.
    private static func classify(_ error: any Error, endpoint: EtcdEndpoint, operation: String,
                                 timeout: Duration, expired: Bool) -> any Error {
        if expired || error is ChannelError && (error as! ChannelError) == .connectTimeout(TimeAmount(timeout)) {
            return EtcdError.timedOut(endpoint: endpoint.description, operation: operation,
                                      milliseconds: Int(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
        }
        if let known = error as? EtcdError { return known }
        if error is CancellationError { return error }
        return EtcdError.unreachable(endpoint: endpoint.description, reason: "\(error)")
    }
}

/// A one-way flag set on an event loop and read by the caller.
private final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

extension TimeAmount {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}
