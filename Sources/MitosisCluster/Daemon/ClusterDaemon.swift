import Logging
import ServiceLifecycle

/// `mitosis cluster --config FILE`: one node's daemon under swift-service-lifecycle. SIGTERM
/// or SIGINT stop it gracefully (a primary fences and every node revokes its lease, so a
/// standby takes over at once); SIGKILL stops it with the service it started by command
/// (`CommandReplica`, a fresh `HotReplica`), and with a restored one when the daemon is its pid
/// namespace's init (Docs/cluster.md, "One pid namespace per host").
public enum ClusterDaemon {
    public static func run(config: ClusterConfig, logLevel: Logger.Level = .info) async throws {
        LoggingSystem.bootstrap { label in
            var handler = ClusterLogHandler(label: label)
            handler.logLevel = logLevel
            return handler
        }
        var logger = Logger(label: "mitosis.cluster")
        logger[metadataKey: "node"] = "\(config.node)"
        let etcd = EtcdClient(endpoints: config.etcd, requestTimeout: config.timings.requestTimeout)
        let hot = config.replication.map {
            HotReplica(settings: $0, command: config.start, listen: config.replicationAddress, logger: logger)
        }
        let replica: any ReplicaControl = hot ?? CommandReplica(command: config.start, logger: logger)
        let node = ClusterNode(service: config.service, node: config.node, replicationAddress: config.replicationAddress,
                               timings: config.timings, etcd: etcd, replica: replica, address: config.address, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: NodeService(node: node))],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        // A graceful stop fenced a primary's service; a restored service has no parent-death
        // signal, so it is ended here, and the standby with it.
        await hot?.stop()
    }

    private struct NodeService: Service {
        let node: ClusterNode
        func run() async throws {
            try await cancelWhenGracefulShutdown { await node.run() }
        }
    }
}
