import Foundation

/// `mitosis cluster status`: what etcd says about one service, as a table or JSON.
public struct ClusterStatus: Sendable, Equatable, Codable {
    public struct Member: Sendable, Equatable, Codable {
        public let node: String
        public let role: String
        public let leader: Bool
        public let term: Int64
        public let epoch: Int64
        /// Epochs behind the primary's record, when both are in the same term; nil otherwise
        /// (a resync is due, or there is no primary).
        public let lag: Int64?
        public let ready: Bool
        public let reason: String?
        public let following: String?
        public let replicationAddress: String
    }

    public let service: String
    public let revision: Int64
    public let leader: String?
    /// The leader key's create revision.
    public let term: Int64?
    public let members: [Member]
    /// Keys under the service whose value is not valid, with why.
    public let invalid: [String: String]

    public static func read(etcd: EtcdClient, service: String) async throws -> ClusterStatus {
        let view = try await ClusterNode.readView(etcd, ClusterKeys(service: service))
        let leaderName = view.leader.map { $0.node.isEmpty ? "(invalid)" : $0.node }
        let primary = view.members.first { $0.node == view.leader?.node }
        let members = view.members.sorted { $0.node < $1.node }.map { member in
            Member(node: member.node, role: member.role.rawValue, leader: member.node == view.leader?.node, term: member.term,
                   epoch: member.epoch, lag: primary.flatMap { $0.term == member.term ? max(0, $0.epoch - member.epoch) : nil },
                   ready: member.ready, reason: member.reason, following: member.following, replicationAddress: member.replicationAddress)
        }
        return ClusterStatus(service: service, revision: view.revision, leader: leaderName, term: view.leader?.term,
                             members: members, invalid: view.invalid)
    }

    public var json: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    public var table: String {
        var lines = ["service \(service): " + (leader.map { "leader \($0), term \(term ?? 0)" } ?? "NO LEADER") + " (etcd revision \(revision))"]
        let header = ["NODE", "ROLE", "TERM", "EPOCH", "LAG", "READY", "REPLICATION", "NOTE"]
        let rows = members.map { member in
            [member.node + (member.leader ? "*" : ""), member.role, String(member.term), String(member.epoch),
             member.lag.map(String.init) ?? "-", member.ready ? "yes" : "no", member.replicationAddress,
             [member.following.map { "following \($0)" }, member.reason].compactMap { $0 }.joined(separator: "; ")]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        for row in [header] + rows {
            lines.append(row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces))
        }
        if members.isEmpty { lines.append("(no member is alive)") }
        for (key, why) in invalid.sorted(by: { $0.key < $1.key }) { lines.append("ignored \(key): \(why)") }
        return lines.joined(separator: "\n")
    }
}
