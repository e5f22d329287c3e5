import MitosisModel

/// Everything that can go wrong talking to etcd, as one error with one line of text
/// (domain `etcd` of the `MitosisFailure` family).
///
/// etcd's answers are input like any other: a response that is not what the gateway documents
/// (bad JSON, a missing field, a negative revision, a key that is not base64, a body over the
/// limit) is `malformed` or `tooLarge`, never a crash or a guess.
public enum EtcdError: MitosisFailure, Equatable {
    /// No TCP connection (refused, unreachable, reset before an answer).
    case unreachable(endpoint: String, reason: String)
    /// No complete answer within the call's deadline (a member without quorum holds requests).
    case timedOut(endpoint: String, operation: String, milliseconds: Int)
    /// etcd answered with an error (HTTP status, gRPC code and its message).
    case rejected(endpoint: String, operation: String, httpStatus: Int, code: Int, message: String)
    /// The answer is not what the gateway documents.
    case malformed(endpoint: String, operation: String, reason: String)
    /// The answer (or one watch message) is larger than the client accepts.
    case tooLarge(endpoint: String, operation: String, limit: Int)
    /// The lease is gone: expired or revoked (a keepalive answered with TTL 0).
    case leaseExpired(id: Int64)
    /// A request this client was asked to build is invalid (empty key, key or value over the limit).
    case invalidRequest(String)
    /// The configuration names no endpoint.
    case noEndpoint

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let reason): "etcd \(endpoint): unreachable (\(reason))"
        case .timedOut(let endpoint, let operation, let ms): "etcd \(endpoint): \(operation) got no answer within \(ms) ms"
        case .rejected(let endpoint, let operation, let status, let code, let message):
            "etcd \(endpoint): \(operation) rejected (HTTP \(status), code \(code)): \(message)"
        case .malformed(let endpoint, let operation, let reason): "etcd \(endpoint): \(operation) answer malformed: \(reason)"
        case .tooLarge(let endpoint, let operation, let limit): "etcd \(endpoint): \(operation) answer over \(limit) bytes"
        case .leaseExpired(let id): "etcd lease \(id) expired or revoked"
        case .invalidRequest(let why): "etcd request invalid: \(why)"
        case .noEndpoint: "no etcd endpoint configured"
        }
    }

    public var code: String {
        switch self {
        case .unreachable: "etcd.unreachable"
        case .timedOut: "etcd.timedOut"
        case .rejected: "etcd.rejected"
        case .malformed: "etcd.malformed"
        case .tooLarge: "etcd.tooLarge"
        case .leaseExpired: "etcd.leaseExpired"
        case .invalidRequest: "etcd.invalidRequest"
        case .noEndpoint: "etcd.noEndpoint"
        }
    }

    /// Whether another endpoint might answer where this one did not. A definite answer of etcd
    /// (an expired lease, a malformed request of ours) would be the same everywhere.
    var isEndpointFailure: Bool {
        switch self {
        case .unreachable, .timedOut, .malformed, .tooLarge: true
        case .rejected(_, _, let status, _, _): status >= 500
        case .leaseExpired, .invalidRequest, .noEndpoint: false
        }
    }
}

/// One etcd client URL, `http://HOST:PORT` (or `HOST:PORT`). Only plain HTTP: the cluster
/// talks to etcd on the hosts' private network (TLS would come with swift-nio-ssl).
public struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `http://HOST:PORT` or `HOST:PORT`; nil for anything else (https, a path, a user,
    /// a port out of range, characters that are not a host name or an IPv4 address).
    public init?(_ text: String) {
        var rest = Substring(text)
        if rest.hasPrefix("http://") { rest = rest.dropFirst("http://".count) }
        guard rest.count <= 261, let colon = rest.lastIndex(of: ":") else { return nil }
        let host = rest[..<colon], portText = rest[rest.index(after: colon)...]
        guard !host.isEmpty, host.count <= 253,
              host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-") }),
              !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portText), (1...65535).contains(port) else { return nil }
        self.host = String(host)
        self.port = port
    }

    public var description: String { "http://\(host):\(port)" }
}
