import ArgumentParser
import Foundation
import MitosisCluster

struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Fail a service over between hosts on etcd: the daemon of one node, or the cluster's status.",
        discussion: "Docs/cluster.md describes the keys, the timings, the election and the fencing.",
        subcommands: [Run.self, Status.self],
        defaultSubcommand: Run.self
    )

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Run this node's daemon (the default).")

        @Option(help: "The node's configuration (JSON, Docs/cluster.md).")
        var config: String

        @Flag(help: "Log every decision, not only changes.")
        var verbose = false

        func run() async throws {
            let loaded: ClusterConfig
            do { loaded = try ClusterConfig.load(path: config) } catch { fail(error) }
            do { try await ClusterDaemon.run(config: loaded, logLevel: verbose ? .debug : .info) } catch { fail(error) }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Members, roles, terms, epochs, lag and readiness, read from etcd.")

        @Option(help: "Take the etcd endpoints and the service from this configuration.")
        var config: String?

        @Option(help: "An etcd endpoint (http://HOST:PORT); repeatable.")
        var etcd: [String] = []

        @Option(help: "The service's name.")
        var service: String?

        @Flag(help: "Print JSON.")
        var json = false

        func run() async throws {
            var endpoints: [EtcdEndpoint] = []
            var name = service
            if let config {
                do {
                    let loaded = try ClusterConfig.load(path: config)
                    endpoints = loaded.etcd
                    name = name ?? loaded.service
                } catch { fail(error) }
            }
            for text in etcd {
                guard let endpoint = EtcdEndpoint(text) else { fail(ValidationError("--etcd \(text): http://HOST:PORT expected")) }
                endpoints.append(endpoint)
            }
            guard let name, MemberRecord.isValidNodeName(name) else { fail(ValidationError("a valid --service (or --config) is needed")) }
            guard !endpoints.isEmpty else { fail(ValidationError("an --etcd endpoint (or --config) is needed")) }
            do {
                let status = try await ClusterStatus.read(etcd: EtcdClient(endpoints: endpoints), service: name)
                print(json ? status.json : status.table)
            } catch { fail(error) }
        }
    }
}
