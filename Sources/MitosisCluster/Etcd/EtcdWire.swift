import Foundation

// The JSON shapes of etcd 3.4's gateway (grpc-gateway over etcdserverpb, proto3 JSON): int64
// fields are decimal strings, bytes are base64, fields at their default value are omitted.
// Decoding is strict where it matters: every int64 must be a canonical integer in range, every
// key and value valid base64 within the client's limits; unknown fields are ignored (newer
// etcd versions add some).

/// A proto3 int64: a JSON string of decimal digits (a bare number is accepted too).
struct WireInt64: Decodable, Sendable {
    let value: Int64

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            guard text.count <= 20, let parsed = Int64(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an int64: \(text.prefix(24))")
            }
            value = parsed
        } else {
            value = try container.decode(Int64.self)
        }
    }
}

/// Proto3 bytes: base64 text.
struct WireBytes: Decodable, Sendable {
    let value: [UInt8]

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let data = Data(base64Encoded: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not base64")
        }
        value = [UInt8](data)
    }
}

/// The response header; only the store revision is used (cluster and member ids are uint64).
struct WireHeader: Decodable, Sendable {
    let revision: WireInt64?
}

struct WireKeyValue: Decodable, Sendable {
    let key: WireBytes
    let create_revision: WireInt64?
    let mod_revision: WireInt64?
    let version: WireInt64?
    let value: WireBytes?
    let lease: WireInt64?
}

struct WireRangeResponse: Decodable, Sendable {
    let header: WireHeader?
    let kvs: [WireKeyValue]?
    let count: WireInt64?
    let more: Bool?
}

struct WirePutResponse: Decodable, Sendable {
    let header: WireHeader?
}

struct WireDeleteRangeResponse: Decodable, Sendable {
    let header: WireHeader?
    let deleted: WireInt64?
}

struct WireResponseOp: Decodable, Sendable {
    let response_range: WireRangeResponse?
    let response_put: WirePutResponse?
    let response_delete_range: WireDeleteRangeResponse?
}

struct WireTxnResponse: Decodable, Sendable {
    let header: WireHeader?
    let succeeded: Bool?
    let responses: [WireResponseOp]?
}

struct WireLeaseGrantResponse: Decodable, Sendable {
    let header: WireHeader?
    let ID: WireInt64?
    let TTL: WireInt64?
    let error: String?
}

struct WireLeaseKeepAliveResult: Decodable, Sendable {
    let header: WireHeader?
    let ID: WireInt64?
    let TTL: WireInt64?
}

/// An error inside a streamed answer (keepalive, watch).
struct WireStreamError: Decodable, Sendable {
    let grpc_code: Int?
    let http_code: Int?
    let message: String?
}

/// Streaming endpoints wrap each message: `{"result": …}` or `{"error": …}`.
struct WireStreamed<Result: Decodable & Sendable>: Decodable, Sendable {
    let result: Result?
    let error: WireStreamError?
}

struct WireEvent: Decodable, Sendable {
    let type: String?
    let kv: WireKeyValue?
    let prev_kv: WireKeyValue?
}

struct WireWatchResult: Decodable, Sendable {
    let header: WireHeader?
    let watch_id: WireInt64?
    let created: Bool?
    let canceled: Bool?
    let compact_revision: WireInt64?
    let cancel_reason: String?
    let events: [WireEvent]?
}

/// A unary error answer: `{"error": "...", "message": "...", "code": N}`.
struct WireUnaryError: Decodable, Sendable {
    let message: String?
    let code: Int?
}

// Requests. Their int64 fields are sent as strings, as the gateway prints them.

struct WireCompare: Encodable, Sendable {
    let key: String
    let target: String
    let result: String
    let create_revision: String?
    let mod_revision: String?
    let value: String?
    let lease: String?
}

struct WirePutRequest: Encodable, Sendable {
    let key: String
    let value: String
    let lease: String?
}

struct WireRangeRequest: Encodable, Sendable {
    let key: String
    let range_end: String?
    let limit: String?
}

struct WireDeleteRangeRequest: Encodable, Sendable {
    let key: String
    let range_end: String?
}

struct WireRequestOp: Encodable, Sendable {
    let request_range: WireRangeRequest?
    let request_put: WirePutRequest?
    let request_delete_range: WireDeleteRangeRequest?
}

struct WireTxnRequest: Encodable, Sendable {
    let compare: [WireCompare]
    let success: [WireRequestOp]
    let failure: [WireRequestOp]
}

struct WireLeaseRequest: Encodable, Sendable {
    let ID: String
}

struct WireLeaseGrantRequest: Encodable, Sendable {
    let TTL: String
}

struct WireWatchCreate: Encodable, Sendable {
    let key: String
    let range_end: String?
    let start_revision: String?
    let prev_kv: Bool
}

struct WireWatchRequest: Encodable, Sendable {
    let create_request: WireWatchCreate
}
