import CoreMetrics
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// `--metrics ADDR:PORT`: serves `GET /metrics` in the Prometheus text format (version 0.0.4)
/// from the registry that swift-metrics records into (`bootstrap`).
///
/// A dozen lines of swift-nio's HTTP/1.1 server rather than a web framework: the package
/// already builds NIOHTTP1 (the etcd client), and a scrape endpoint needs one route, no TLS, no
/// routing, no bodies to parse. Each request is answered on the event loop from the registry's
/// own lock-protected values; nothing blocks.
struct MetricsEndpoint: Service {
    let host: String
    let port: Int
    let registry: PrometheusCollectorRegistry
    let logger: Logger

    /// Makes Prometheus the swift-metrics backend of this process (once, before any metric is
    /// created) with buckets for epochs (1 ms to 5 s), and returns the endpoint to run.
    static func bootstrap(_ endpoint: Endpoint, logger: Logger) -> MetricsEndpoint {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000].map { Duration.milliseconds($0) }
        MetricsSystem.bootstrap(factory)
        return MetricsEndpoint(host: endpoint.host, port: endpoint.port, registry: registry, logger: logger)
    }

    func run() async throws {
        let registry = self.registry
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(ScrapeHandler(registry: registry))
                }
            }
            .bind(host: host, port: port).get()
        logger.info("metrics: serving http://\(host):\(channel.localAddress?.port ?? port)/metrics")
        // Until the service group shuts down (or this task is cancelled).
        try? await gracefulShutdown()
        try? await channel.close()
    }
}

/// Answers `GET /metrics` (and `/`) with the registry's text; anything else 404 or 405.
private final class ScrapeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let registry: PrometheusCollectorRegistry
    private var request: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) { self.registry = registry }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            request = nil
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            let (status, body): (HTTPResponseStatus, [UInt8])
            if head.method != .GET && head.method != .HEAD {
                (status, body) = (.methodNotAllowed, Array("GET only\n".utf8))
            } else if path == "/metrics" || path == "/" {
                (status, body) = (.ok, registry.emitToBuffer())
            } else {
                (status, body) = (.notFound, Array("not found: try /metrics\n".utf8))
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
            headers.add(name: "Content-Length", value: "\(body.count)")
            let keepAlive = head.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
