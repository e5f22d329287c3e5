import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// A key and its value as etcd holds it.
public struct EtcdKeyValue: Sendable, Equatable {
    public let key: String
    public let value: [UInt8]
    /// The revision that created the key: a new one each time the key comes back after a delete.
    public let createRevision: Int64
    public let modRevision: Int64
    public let version: Int64
    /// The lease the key is attached to, 0 for none.
    public let lease: Int64
}

/// A granted lease.
public struct EtcdLease: Sendable, Equatable {
    public let id: Int64
    /// The TTL etcd granted, which may be longer than asked (etcd's floor is 1.5 × its election timeout).
    public let ttlSeconds: Int64
    /// When the grant request was sent: the lease lives at least until `sentAt + ttl`.
    public let sentAt: ContinuousClock.Instant
}

/// A successful keepalive. `sentAt` is when the request that etcd answered was *sent*: etcd
/// restarted the lease's countdown no earlier than that, so the lease cannot expire before
/// `sentAt + ttl` — the deadline a primary fences itself by.
public struct EtcdKeepalive: Sendable, Equatable {
    public let lease: Int64
    public let ttlSeconds: Int64
    public let sentAt: ContinuousClock.Instant
    public var deadline: ContinuousClock.Instant { sentAt + .seconds(ttlSeconds) }
}

/// One comparison of a transaction (all of them must hold for the success branch).
public enum EtcdCompare: Sendable, Equatable {
    /// The key's create revision equals `revision`; 0 means the key is absent.
    case createRevision(key: String, equals: Int64)
    /// The key's value equals `value`.
    case value(key: String, equals: [UInt8])
    /// The key is attached to `lease`.
    case lease(key: String, equals: Int64)
}

/// One operation of a transaction.
public enum EtcdOperation: Sendable, Equatable {
    case put(key: String, value: [UInt8], lease: Int64 = 0)
    case get(key: String)
    case delete(key: String)
}

/// What one transaction operation returned.
public enum EtcdOperationResult: Sendable, Equatable {
    case range([EtcdKeyValue])
    case put
    case deleted(count: Int64)
}

public struct EtcdTxnResult: Sendable, Equatable {
    public let succeeded: Bool
    /// The store's revision after the transaction.
    public let revision: Int64
    public let results: [EtcdOperationResult]
}

/// Keys found by a range read, with the store revision they were read at.
public struct EtcdRange: Sendable, Equatable {
    public let revision: Int64
    public let keyValues: [EtcdKeyValue]
}

/// Changes seen by a watch.
public enum EtcdWatchEvent: Sendable, Equatable {
    case put(EtcdKeyValue)
    /// A delete (or a lease expiry) of `key` at `revision`; `previous` when etcd still had it.
    case delete(key: String, revision: Int64, previous: EtcdKeyValue?)
}

/// Bounds on what the client accepts from etcd (and sends to it).
public struct EtcdLimits: Sendable {
    public var responseBytes = 1 << 20
    public var watchMessageBytes = 1 << 20
    public var keyBytes = 1024
    public var valueBytes = 64 << 10
    public var keysPerRange = 1024
    public init() {}
}

/// An etcd v3 client over the JSON gateway (`/v3/...`; `/v3beta/...` on a 404, as etcd 3.3
/// serves). Every call is bounded by `requestTimeout` per endpoint and tries the endpoints in
/// turn, starting with the last one that answered. Every error is an `EtcdError`.
///
/// A transaction that timed out may still have been applied; callers that need to know read
/// the key back (the election does: a CAS that "failed" compares the leader key's lease with its own).
public final class EtcdClient: Sendable {
    public let endpoints: [EtcdEndpoint]
    public let requestTimeout: Duration
    public let limits: EtcdLimits
    private let transport: GatewayTransport
    private let state = Mutex(State())

    private struct State {
        var preferred = 0
        var prefix = "/v3"
    }

    public init(endpoints: [EtcdEndpoint], group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                requestTimeout: Duration = .milliseconds(500), limits: EtcdLimits = EtcdLimits()) {
        self.endpoints = endpoints
        self.requestTimeout = requestTimeout
        self.limits = limits
        transport = GatewayTransport(group: group)
    }

    // MARK: Leases

    public func grant(ttlSeconds: Int64) async throws -> EtcdLease {
        guard (1...3600).contains(ttlSeconds) else { throw EtcdError.invalidRequest("lease TTL \(ttlSeconds) s is outside 1...3600") }
        let (answer, endpoint, sentAt) = try await call("lease/grant", WireLeaseGrantRequest(TTL: String(ttlSeconds)), as: WireLeaseGrantResponse.self)
        if let error = answer.error, !error.isEmpty {
            throw EtcdError.rejected(endpoint: endpoint, operation: "lease/grant", httpStatus: 200, code: -1, message: String(error.prefix(200)))
        }
        guard let id = answer.ID?.value, id > 0, let ttl = answer.TTL?.value, ttl >= ttlSeconds, ttl <= 3600 else {
            throw EtcdError.malformed(endpoint: endpoint, operation: "lease/grant", reason: "no positive lease ID and TTL")
        }
        return EtcdLease(id: id, ttlSeconds: ttl, sentAt: sentAt)
    }

    /// Renews `lease` once. Throws `leaseExpired` when etcd no longer knows it.
    public func keepAlive(_ lease: Int64, timeout: Duration? = nil) async throws -> EtcdKeepalive {
        let (answer, endpoint, sentAt) = try await call("lease/keepalive", WireLeaseRequest(ID: String(lease)),
                                                        as: WireStreamed<WireLeaseKeepAliveResult>.self, timeout: timeout)
        return try keepalive(answer, lease: lease, endpoint: endpoint, sentAt: sentAt)
    }

    private func keepalive(_ answer: WireStreamed<WireLeaseKeepAliveResult>, lease: Int64, endpoint: String,
                           sentAt: ContinuousClock.Instant) throws -> EtcdKeepalive {
        if let error = answer.error {
            throw EtcdError.rejected(endpoint: endpoint, operation: "lease/keepalive", httpStatus: error.http_code ?? 0,
                                     code: error.grpc_code ?? -1, message: String((error.message ?? "").prefix(200)))
        }
        guard let result = answer.result, result.ID?.value == lease else {
            throw EtcdError.malformed(endpoint: endpoint, operation: "lease/keepalive", reason: "no result for lease \(lease)")
        }
        let ttl = result.TTL?.value ?? 0
        guard ttl > 0 else { throw EtcdError.leaseExpired(id: lease) }
        guard ttl <= 3600 else { throw EtcdError.malformed(endpoint: endpoint, operation: "lease/keepalive", reason: "TTL \(ttl)") }
        return EtcdKeepalive(lease: lease, ttlSeconds: ttl, sentAt: sentAt)
    }

    /// Renews `lease`, then confirms with a linearizable read on the same endpoint that this
    /// endpoint is on the side of etcd that has quorum. Only both together count.
    ///
    /// Why: etcd 3.4 (before 3.4.25) renews a lease on whichever member believes it leads,
    /// without checking it still does. A leader cut off from the others keeps answering
    /// keepalives until its CheckQuorum steps it down (up to an election timeout or two), while
    /// the majority elects a new leader whose copy of the lease was never renewed. A read index
    /// needs a quorum's heartbeat acknowledgement, so the stale leader cannot answer the read:
    /// the renewal it gave is not counted, and the primary fences on time.
    public func keepAliveConfirmed(_ lease: Int64, timeout: Duration? = nil) async throws -> EtcdKeepalive {
        guard !endpoints.isEmpty else { throw EtcdError.noEndpoint }
        let renewBody = try encodeBody(WireLeaseRequest(ID: String(lease)))
        let read = try encodeBody(WireRangeRequest(key: try encodeKey("/mitosis-quorum-check"), range_end: nil, limit: "1"))
        var lastError: EtcdError = .noEndpoint
        for (offset, endpoint) in rotation().enumerated() {
            try Task.checkCancellation()
            do {
                let (answer, sentAt) = try await callOne(endpoint, "lease/keepalive", renewBody, as: WireStreamed<WireLeaseKeepAliveResult>.self,
                                                         timeout: timeout ?? requestTimeout)
                let renewal = try keepalive(answer, lease: lease, endpoint: endpoint.description, sentAt: sentAt)
                _ = try await callOne(endpoint, "kv/range", read, as: WireRangeResponse.self, timeout: timeout ?? requestTimeout)
                if offset > 0 { state.withLock { $0.preferred = endpoints.firstIndex(of: endpoint) ?? 0 } }
                return renewal
            } catch let error as EtcdError where error.isEndpointFailure {
                lastError = error
            }
        }
        throw lastError
    }

    /// Revokes `lease`: every key attached to it is deleted at once.
    public func revoke(_ lease: Int64) async throws {
        do {
            _ = try await call("lease/revoke", WireLeaseRequest(ID: String(lease)), as: WirePutResponse.self)
        } catch EtcdError.rejected(_, _, _, let code, _) where code == 5 {
            // NotFound: already gone, which is what revoking wants.
        }
    }

    // MARK: Keys

    public func get(_ key: String) async throws -> EtcdKeyValue? {
        try await range(WireRangeRequest(key: try encodeKey(key), range_end: nil, limit: nil)).keyValues.first
    }

    /// Every key under `prefix`, at one revision.
    public func get(prefix: String) async throws -> EtcdRange {
        try await range(WireRangeRequest(key: try encodeKey(prefix), range_end: try Self.rangeEnd(of: prefix),
                                         limit: String(limits.keysPerRange + 1)))
    }

    public func put(_ key: String, value: [UInt8], lease: Int64 = 0) async throws {
        let request = try putRequest(key, value, lease)
        _ = try await call("kv/put", request, as: WirePutResponse.self)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    @discardableResult
    public func delete(_ key: String) async throws -> Int64 {
        let (answer, _, _) = try await call("kv/deleterange", WireDeleteRangeRequest(key: try encodeKey(key), range_end: nil),
                                            as: WireDeleteRangeResponse.self)
        return answer.deleted?.value ?? 0
    }

    /// Deletes every key under `prefix`.
    @discardableResult
    public func delete(prefix: String) async throws -> Int64 {
        let (answer, _, _) = try await call("kv/deleterange", WireDeleteRangeRequest(key: try encodeKey(prefix), range_end: try Self.rangeEnd(of: prefix)),
                                            as: WireDeleteRangeResponse.self)
        return answer.deleted?.value ?? 0
    }

    /// If every comparison holds, runs `success`, else `failure`: atomically.
    public func txn(compare: [EtcdCompare], success: [EtcdOperation], failure: [EtcdOperation] = []) async throws -> EtcdTxnResult {
        let request = WireTxnRequest(compare: try compare.map(wireCompare), success: try success.map(wireOperation),
                                     failure: try failure.map(wireOperation))
        let (answer, endpoint, _) = try await call("kv/txn", request, as: WireTxnResponse.self)
        let succeeded = answer.succeeded ?? false
        let operations = succeeded ? success : failure
        let responses = answer.responses ?? []
        guard responses.count == operations.count else {
            throw EtcdError.malformed(endpoint: endpoint, operation: "kv/txn", reason: "\(responses.count) results for \(operations.count) operations")
        }
        var results: [EtcdOperationResult] = []
        for (operation, response) in zip(operations, responses) {
            switch operation {
            case .get:
                guard let range = response.response_range else { throw EtcdError.malformed(endpoint: endpoint, operation: "kv/txn", reason: "missing range result") }
                results.append(.range(try keyValues(range.kvs ?? [], endpoint: endpoint, operation: "kv/txn")))
            case .put:
                guard response.response_put != nil else { throw EtcdError.malformed(endpoint: endpoint, operation: "kv/txn", reason: "missing put result") }
                results.append(.put)
            case .delete:
                guard let deleted = response.response_delete_range else { throw EtcdError.malformed(endpoint: endpoint, operation: "kv/txn", reason: "missing delete result") }
                results.append(.deleted(count: deleted.deleted?.value ?? 0))
            }
        }
        return EtcdTxnResult(succeeded: succeeded, revision: try revision(answer.header, endpoint: endpoint, operation: "kv/txn"), results: results)
    }

    // MARK: Watch

    /// Watches `key` (or every key under it when `prefix`) from `fromRevision` (0: from now).
    /// The stream ends with an `EtcdError` when the connection does (the caller re-watches
    /// from the last revision it saw + 1), or when the consumer falls 1,024 messages behind.
    public func watch(_ key: String, prefix: Bool = false, fromRevision: Int64 = 0) -> AsyncThrowingStream<[EtcdWatchEvent], any Error> {
        let (stream, continuation) = AsyncThrowingStream<[EtcdWatchEvent], any Error>.makeStream(bufferingPolicy: .bufferingOldest(1024))
        let task = Task {
            do {
                let create = WireWatchCreate(key: try encodeKey(key), range_end: prefix ? try Self.rangeEnd(of: key) : nil,
                                             start_revision: fromRevision > 0 ? String(fromRevision) : nil, prev_kv: true)
                let body = try encodeBody(WireWatchRequest(create_request: create))
                var lastError: any Error = EtcdError.noEndpoint
                for endpoint in rotation() {
                    let path = state.withLock { $0.prefix } + "/watch"
                    do {
                        try await transport.stream(endpoint, path: path, body: body, operation: "watch", connectTimeout: requestTimeout,
                                                   limit: limits.watchMessageBytes) { message in
                            let events = try self.watchEvents(message, endpoint: endpoint.description)
                            if !events.isEmpty, case .dropped = continuation.yield(events) {
                                throw EtcdError.tooLarge(endpoint: endpoint.description, operation: "watch", limit: 1024)
                            }
                        }
                        lastError = EtcdError.unreachable(endpoint: endpoint.description, reason: "watch stream ended")
                        break
                    } catch let error as EtcdError where Self.isConnectFailure(error) {
                        lastError = error
                        continue
                    }
                }
                continuation.finish(throwing: lastError)
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    // MARK: Plumbing

    private static func isConnectFailure(_ error: EtcdError) -> Bool {
        if case .unreachable = error { return true }
        if case .timedOut = error { return true }
        return false
    }

    private func watchEvents(_ message: [UInt8], endpoint: String) throws -> [EtcdWatchEvent] {
        let wrapped = try decode(WireStreamed<WireWatchResult>.self, message, endpoint: endpoint, operation: "watch")
        if let error = wrapped.error {
            throw EtcdError.rejected(endpoint: endpoint, operation: "watch", httpStatus: error.http_code ?? 0,
                                     code: error.grpc_code ?? -1, message: String((error.message ?? "").prefix(200)))
        }
        guard let result = wrapped.result else { throw EtcdError.malformed(endpoint: endpoint, operation: "watch", reason: "neither result nor error") }
        if result.canceled == true {
            let reason = result.cancel_reason ?? (result.compact_revision.map { "compacted at \($0.value)" } ?? "canceled")
            throw EtcdError.rejected(endpoint: endpoint, operation: "watch", httpStatus: 200, code: -1, message: String(reason.prefix(200)))
        }
        return try (result.events ?? []).map { event in
            switch event.type ?? "PUT" {
            case "PUT":
                guard let kv = event.kv else { throw EtcdError.malformed(endpoint: endpoint, operation: "watch", reason: "put without kv") }
                return .put(try keyValue(kv, endpoint: endpoint, operation: "watch"))
            case "DELETE":
                guard let kv = event.kv, let revision = kv.mod_revision?.value, revision > 0,
                      let key = String(validating: kv.key.value, as: UTF8.self), !key.isEmpty, kv.key.value.count <= limits.keyBytes else {
                    throw EtcdError.malformed(endpoint: endpoint, operation: "watch", reason: "delete without key or revision")
                }
                return .delete(key: key, revision: revision, previous: try event.prev_kv.map { try keyValue($0, endpoint: endpoint, operation: "watch") })
            default:
                throw EtcdError.malformed(endpoint: endpoint, operation: "watch", reason: "event type \(String((event.type ?? "").prefix(16)))")
            }
        }
    }

    private func range(_ request: WireRangeRequest) async throws -> EtcdRange {
        let (answer, endpoint, _) = try await call("kv/range", request, as: WireRangeResponse.self)
        let found = answer.kvs ?? []
        guard found.count <= limits.keysPerRange else { throw EtcdError.tooLarge(endpoint: endpoint, operation: "kv/range", limit: limits.keysPerRange) }
        return EtcdRange(revision: try revision(answer.header, endpoint: endpoint, operation: "kv/range"),
                         keyValues: try keyValues(found, endpoint: endpoint, operation: "kv/range"))
    }

    private func revision(_ header: WireHeader?, endpoint: String, operation: String) throws -> Int64 {
        guard let revision = header?.revision?.value, revision >= 0 else {
            throw EtcdError.malformed(endpoint: endpoint, operation: operation, reason: "no header revision")
        }
        return revision
    }

    private func keyValues(_ wire: [WireKeyValue], endpoint: String, operation: String) throws -> [EtcdKeyValue] {
        try wire.map { try keyValue($0, endpoint: endpoint, operation: operation) }
    }

    private func keyValue(_ wire: WireKeyValue, endpoint: String, operation: String) throws -> EtcdKeyValue {
        let value = wire.value?.value ?? []
        guard wire.key.value.count <= limits.keyBytes, value.count <= limits.valueBytes else {
            throw EtcdError.tooLarge(endpoint: endpoint, operation: operation, limit: max(limits.keyBytes, limits.valueBytes))
        }
        guard let key = String(validating: wire.key.value, as: UTF8.self), !key.isEmpty else {
            throw EtcdError.malformed(endpoint: endpoint, operation: operation, reason: "key empty or not UTF-8")
        }
        let create = wire.create_revision?.value ?? 0, modified = wire.mod_revision?.value ?? 0
        let version = wire.version?.value ?? 0, lease = wire.lease?.value ?? 0
        guard create > 0, modified >= create, version > 0, lease >= 0 else {
            throw EtcdError.malformed(endpoint: endpoint, operation: operation, reason: "key \(key.prefix(64)): revisions \(create)/\(modified), version \(version), lease \(lease)")
        }
        return EtcdKeyValue(key: key, value: value, createRevision: create, modRevision: modified, version: version, lease: lease)
    }

    private func encodeKey(_ key: String) throws -> String {
        let bytes = Array(key.utf8)
        guard !bytes.isEmpty, bytes.count <= limits.keyBytes else { throw EtcdError.invalidRequest("key of \(bytes.count) bytes (1...\(limits.keyBytes))") }
        return Data(bytes).base64EncodedString()
    }

    private func putRequest(_ key: String, _ value: [UInt8], _ lease: Int64) throws -> WirePutRequest {
        guard value.count <= limits.valueBytes else { throw EtcdError.invalidRequest("value of \(value.count) bytes (limit \(limits.valueBytes))") }
        return WirePutRequest(key: try encodeKey(key), value: Data(value).base64EncodedString(), lease: lease != 0 ? String(lease) : nil)
    }

    private func wireCompare(_ compare: EtcdCompare) throws -> WireCompare {
        switch compare {
        case .createRevision(let key, let revision):
            WireCompare(key: try encodeKey(key), target: "CREATE", result: "EQUAL", create_revision: String(revision), mod_revision: nil, value: nil, lease: nil)
        case .value(let key, let value):
            WireCompare(key: try encodeKey(key), target: "VALUE", result: "EQUAL", create_revision: nil, mod_revision: nil,
                        value: Data(value).base64EncodedString(), lease: nil)
        case .lease(let key, let lease):
            WireCompare(key: try encodeKey(key), target: "LEASE", result: "EQUAL", create_revision: nil, mod_revision: nil, value: nil, lease: String(lease))
        }
    }

    private func wireOperation(_ operation: EtcdOperation) throws -> WireRequestOp {
        switch operation {
        case .put(let key, let value, let lease):
            WireRequestOp(request_range: nil, request_put: try putRequest(key, value, lease), request_delete_range: nil)
        case .get(let key):
            WireRequestOp(request_range: WireRangeRequest(key: try encodeKey(key), range_end: nil, limit: nil), request_put: nil, request_delete_range: nil)
        case .delete(let key):
            WireRequestOp(request_range: nil, request_put: nil, request_delete_range: WireDeleteRangeRequest(key: try encodeKey(key), range_end: nil))
        }
    }

    /// The end of the range of keys starting with `prefix`: the prefix with its last byte + 1.
    private static func rangeEnd(of prefix: String) throws -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last, last == 0xFF { bytes.removeLast() }
        guard !bytes.isEmpty else { throw EtcdError.invalidRequest("prefix has no range end") }
        bytes[bytes.count - 1] += 1
        return Data(bytes).base64EncodedString()
    }

    private func encodeBody(_ request: some Encodable) throws -> [UInt8] {
        do { return Array(try JSONEncoder().encode(request)) } catch { throw EtcdError.invalidRequest("\(error)") }
    }

    private func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], endpoint: String, operation: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(bytes))
        } catch let error as DecodingError {
            throw EtcdError.malformed(endpoint: endpoint, operation: operation, reason: Self.summary(error))
        } catch {
            throw EtcdError.malformed(endpoint: endpoint, operation: operation, reason: "not JSON")
        }
    }

    private static func summary(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let names = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }
            return names.isEmpty ? "the answer" : names.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context): return "\(path(context)): missing \(key.stringValue)"
        case .typeMismatch(_, let context), .valueNotFound(_, let context): return "\(path(context)): wrong type"
        case .dataCorrupted(let context): return "\(path(context)): \(context.debugDescription.prefix(80))"
        @unknown default: return "undecodable"
        }
    }

    /// The endpoints in the order to try them: the last one that answered first.
    private func rotation() -> [EtcdEndpoint] {
        let start = state.withLock { $0.preferred }
        return (0..<endpoints.count).map { endpoints[(start + $0) % endpoints.count] }
    }

    /// POSTs `request` to `operation` on each endpoint in turn until one answers, and decodes the answer.
    /// Returns the decoded answer, the endpoint that gave it, and when the request that got it was sent.
    private func call<Request: Encodable, Answer: Decodable>(
        _ operation: String, _ request: Request, as: Answer.Type, timeout: Duration? = nil
    ) async throws -> (Answer, String, ContinuousClock.Instant) {
        guard !endpoints.isEmpty else { throw EtcdError.noEndpoint }
        let body = try encodeBody(request)
        var lastError: EtcdError = .noEndpoint
        for (offset, endpoint) in rotation().enumerated() {
            try Task.checkCancellation()
            do {
                let (answer, sentAt) = try await callOne(endpoint, operation, body, as: Answer.self, timeout: timeout ?? requestTimeout)
                if offset > 0 { state.withLock { $0.preferred = endpoints.firstIndex(of: endpoint) ?? 0 } }
                return (answer, endpoint.description, sentAt)
            } catch let error as EtcdError where error.isEndpointFailure {
                lastError = error
            }
        }
        throw lastError
    }

    private func callOne<Answer: Decodable>(_ endpoint: EtcdEndpoint, _ operation: String, _ body: [UInt8],
                                            as: Answer.Type, timeout: Duration) async throws -> (Answer, ContinuousClock.Instant) {
        var prefix = state.withLock { $0.prefix }
        while true {
            let sentAt = ContinuousClock.now
            let response = try await transport.post(endpoint, path: "\(prefix)/\(operation)", body: body, operation: operation,
                                                    timeout: timeout, limit: limits.responseBytes)
            let error = response.status == 200 ? nil : try? JSONDecoder().decode(WireUnaryError.self, from: Data(response.body))
            if response.status == 404 && error?.code == nil && prefix == "/v3" {
                // No such route (a plain-text 404, not a gRPC NotFound): etcd 3.3 serves the
                // gateway under /v3beta only; 3.4 serves both.
                prefix = "/v3beta"
                state.withLock { $0.prefix = prefix }
                continue
            }
            guard response.status == 200 else {
                throw EtcdError.rejected(endpoint: endpoint.description, operation: operation, httpStatus: response.status,
                                         code: error?.code ?? -1, message: String((error?.message ?? "").prefix(200)))
            }
            return (try decode(Answer.self, response.body, endpoint: endpoint.description, operation: operation), sentAt)
        }
    }
}
