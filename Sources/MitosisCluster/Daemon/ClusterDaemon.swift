import Logging
import ServiceLifecycle

/// `mitosis cluster --config FILE`: one node's daemon under swift-service-lifecycle. SIGTERM
/// or SIGINT stop it gracefully (a primary fences and every node revokes its lease, so a
/// standby takes over at once); SIGKILL stops it with its service (`CommandReplica`).
public enum ClusterDaemon {
    public static func run(config: ClusterConfig, logLevel: Logger.Level = .info) async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = logLevel
            return handler
        }
        var logger = Logger(label: "mitosis.cluster")
        logger[metadataKey: "node"] = "\(config.node)"
        let etcd = EtcdClient(endpoints: config.etcd, requestTimeout: config.timings.requestTimeout)
        let node = ClusterNode(service: config.service, node: config.node, replicationAddress: config.replicationAddress,
                               timings: config.timings, etcd: etcd, replica: CommandReplica(command: config.start, logger: logger),
                               address: config.address, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: NodeService(node: node))],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    private struct NodeService: Service {
        let node: ClusterNode
        func run() async throws {
            try await cancelWhenGracefulShutdown { await node.run() }
        }
    }
}
