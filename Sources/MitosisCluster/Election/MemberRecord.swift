import Foundation
import MitosisModel

/// What one node publishes about itself under `/mitosis/<service>/members/<node>`, attached to
/// its own lease: the key disappears when the node stops renewing it.
///
/// Read from etcd, it is hostile input: `decode` accepts only a small JSON object with a valid
/// node name, non-negative term and epoch, a known role and bounded strings.
public struct MemberRecord: Sendable, Equatable, Codable {
    public enum Role: String, Sendable, Codable {
        /// Holds the leader key and runs the service.
        case primary
        /// Follows the primary (receives its epochs).
        case standby
        /// Stopped its service at its lease deadline. Not ready while it cannot reach etcd; once
        /// it can and no other node holds the key, ready: it holds the frozen service and may
        /// resume it if it wins the key again (Docs/cluster.md).
        case fenced
    }

    public var node: String
    public var role: Role
    /// The term of the newest committed epoch this node holds (the leader key's create revision then).
    public var term: Int64
    /// The newest committed epoch this node holds (durably, on a standby; acknowledged, on a primary).
    public var epoch: Int64
    /// Whether a promotion here would succeed now; a node that is not ready is never elected.
    public var ready: Bool
    /// Why not ready (or a note); at most 200 characters.
    public var reason: String?
    /// Where the primary reaches this node's standby (HOST:PORT).
    public var replicationAddress: String
    /// The leader this node follows (standby) or nil.
    public var following: String?

    public init(node: String, role: Role, term: Int64, epoch: Int64, ready: Bool, reason: String? = nil,
                replicationAddress: String, following: String? = nil) {
        self.node = node
        self.role = role
        self.term = term
        self.epoch = epoch
        self.ready = ready
        self.reason = reason
        self.replicationAddress = replicationAddress
        self.following = following
    }

    /// Largest encoded record accepted.
    public static let maximumBytes = 2048

    /// A node name: 1 to 63 characters of `a-z 0-9 - _ .`, starting with a letter or digit.
    /// It is a path component of etcd keys and a word in logs, so nothing else is allowed.
    public static func isValidNodeName(_ name: some StringProtocol) -> Bool {
        guard let first = name.first, (1...63).contains(name.count), first.isASCII, first.isLetter || first.isNumber else { return false }
        return name.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
    }

    public func encoded() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return Array((try? encoder.encode(self)) ?? Data())
    }

    /// The record in `bytes` (an etcd value), or why it is not one.
    public static func decode(_ bytes: [UInt8]) -> Result<MemberRecord, MemberRecordError> {
        guard bytes.count <= maximumBytes else { return .failure(.init("record of \(bytes.count) bytes (limit \(maximumBytes))")) }
        let record: MemberRecord
        do {
            record = try JSONDecoder().decode(MemberRecord.self, from: Data(bytes))
        } catch {
            return .failure(.init("not a member record (JSON with node, role, term, epoch, ready, replicationAddress)"))
        }
        guard isValidNodeName(record.node) else { return .failure(.init("invalid node name")) }
        guard record.term >= 0, record.epoch >= 0 else { return .failure(.init("negative term or epoch")) }
        guard (record.reason?.count ?? 0) <= 200, record.replicationAddress.count <= 261 else { return .failure(.init("string over its bound")) }
        if let following = record.following, !isValidNodeName(following) { return .failure(.init("invalid leader name")) }
        return .success(record)
    }

    /// Election order: a later term first, then a higher epoch; equal positions go to the
    /// smaller node name, so every node computes the same order from the same view.
    public static func precedes(_ a: MemberRecord, _ b: MemberRecord) -> Bool {
        if a.term != b.term { return a.term > b.term }
        if a.epoch != b.epoch { return a.epoch > b.epoch }
        // At the same epoch, a fenced primary's frozen service holds that epoch and every write
        // it acknowledged after it: it goes first.
        if (a.role == .fenced) != (b.role == .fenced) { return a.role == .fenced }
        return a.node < b.node
    }
}

/// Why an etcd value is not a member record (domain `member`).
public struct MemberRecordError: MitosisFailure, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
    public static var domain: String { "member" }
    public var code: String { "member.invalid" }
}

/// The etcd keys of one service.
public struct ClusterKeys: Sendable, Equatable {
    public let service: String

    public init(service: String) { self.service = service }

    public var root: String { "/mitosis/\(service)/" }
    /// The leader key: value = the primary's node name, attached to the primary's lease. Its
    /// create revision is the term.
    public var leader: String { root + "leader" }
    public var membersPrefix: String { root + "members/" }
    public func member(_ node: String) -> String { membersPrefix + node }
}
