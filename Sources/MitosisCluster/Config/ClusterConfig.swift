import Foundation
import MitosisModel

/// The configuration of one node's cluster daemon (`mitosis cluster --config FILE`), a JSON file:
///
/// ```json
/// {
///   "service": "web",
///   "node": "a",
///   "etcd": ["http://10.231.0.1:2379", "http://10.231.0.2:2379", "http://10.231.0.3:2379"],
///   "replicationAddress": "10.231.0.1:7100",
///   "start": ["/usr/bin/redis-server", "/etc/redis/redis.conf"],
///   "address": { "cidr": "10.231.0.100/24", "device": "eth0" },
///   "replication": { "directory": "/var/lib/mitosis/web", "data": ["/var/lib/web"],
///                    "intervalMilliseconds": 50, "acknowledgementTimeoutMilliseconds": 2000 },
///   "timings": { "leaseTTLSeconds": 1, "keepaliveMilliseconds": 200,
///                "requestTimeoutMilliseconds": 150, "fenceMarginMilliseconds": 200 }
/// }
/// ```
///
/// The file is input like any other: at most 64 KiB, unknown keys refused (a misspelt key
/// must not silently fall back to a default), every field checked; one clear error.
public struct ClusterConfig: Sendable, Equatable {
    public var service: String
    public var node: String
    public var etcd: [EtcdEndpoint]
    public var replicationAddress: String
    /// The service's command: started at promotion by a cold standby (no `replication`), or
    /// once, to start a fresh cluster, by a hot one.
    public var start: [String]
    public var address: HostAddress?
    /// Hot standby (`HotReplica`): the service's state is replicated and promoted.
    public var replication: ReplicationSettings?
    public var timings: ElectionTimings

    public static let maximumBytes = 64 << 10

    public static func load(path: String) throws -> ClusterConfig {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ConfigError("cannot open \(path)") }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: maximumBytes + 1)) ?? Data()
        guard data.count <= maximumBytes else { throw ConfigError("\(path): larger than \(maximumBytes) bytes") }
        do {
            return try parse(Array(data))
        } catch let error as ConfigError {
            throw ConfigError("\(path): \(error.description)")
        }
    }

    public static func parse(_ bytes: [UInt8]) throws -> ClusterConfig {
        guard bytes.count <= maximumBytes else { throw ConfigError("larger than \(maximumBytes) bytes") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)), let top = object as? [String: Any] else {
            throw ConfigError("not a JSON object")
        }
        try onlyKeys(top, ["service", "node", "etcd", "replicationAddress", "start", "address", "replication", "timings"], in: "the configuration")
        let service = try string(top, "service", max: 63)
        guard MemberRecord.isValidNodeName(service) else { throw ConfigError("service: 1-63 characters of a-z 0-9 - _ . expected") }
        let node = try string(top, "node", max: 63)
        guard MemberRecord.isValidNodeName(node) else { throw ConfigError("node: 1-63 characters of a-z 0-9 - _ . expected") }
        guard let etcdList = top["etcd"] as? [Any], (1...9).contains(etcdList.count) else { throw ConfigError("etcd: a list of 1 to 9 endpoints expected") }
        let etcd = try etcdList.map { item -> EtcdEndpoint in
            guard let text = item as? String, let endpoint = EtcdEndpoint(text) else { throw ConfigError("etcd: \(String(describing: item).prefix(80)) is not http://HOST:PORT") }
            return endpoint
        }
        let replicationAddress = try string(top, "replicationAddress", max: 261)
        guard EtcdEndpoint(replicationAddress) != nil, !replicationAddress.hasPrefix("http") else { throw ConfigError("replicationAddress: HOST:PORT expected") }
        guard let startList = top["start"] as? [Any], (1...64).contains(startList.count) else { throw ConfigError("start: a command as a list of 1 to 64 strings expected") }
        let start = try startList.map { item -> String in
            guard let text = item as? String, text.utf8.count <= 4096, !text.contains("\0") else { throw ConfigError("start: strings of at most 4096 bytes expected") }
            return text
        }
        guard start[0].hasPrefix("/") else { throw ConfigError("start: the command must be an absolute path") }
        var address: HostAddress?
        if let value = top["address"] {
            guard let fields = value as? [String: Any] else { throw ConfigError("address: an object expected") }
            try onlyKeys(fields, ["cidr", "device"], in: "address")
            let cidr = try string(fields, "cidr", max: 18), device = try string(fields, "device", max: 15)
            guard isIPv4CIDR(cidr) else { throw ConfigError("address.cidr: A.B.C.D/N expected") }
            guard device.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }), device != ".", device != ".." else {
                throw ConfigError("address.device: an interface name expected")
            }
            address = HostAddress(cidr: cidr, device: device)
        }
        var replication: ReplicationSettings?
        if let value = top["replication"] {
            guard let fields = value as? [String: Any] else { throw ConfigError("replication: an object expected") }
            try onlyKeys(fields, ["directory", "data", "intervalMilliseconds", "acknowledgementTimeoutMilliseconds"], in: "replication")
            let directory = try string(fields, "directory", max: 4096)
            guard isAbsolutePath(directory) else { throw ConfigError("replication.directory: an absolute path expected") }
            var settings = ReplicationSettings(directory: directory)
            if let data = fields["data"] {
                guard let list = data as? [Any], list.count <= 64 else { throw ConfigError("replication.data: a list of at most 64 absolute paths expected") }
                settings.dataDirectories = try list.map { item in
                    guard let path = item as? String, isAbsolutePath(path) else { throw ConfigError("replication.data: absolute paths expected") }
                    return path
                }
            }
            if fields["intervalMilliseconds"] != nil { settings.interval = .milliseconds(try integer(fields, "intervalMilliseconds", 1...60_000, in: "replication")) }
            if fields["acknowledgementTimeoutMilliseconds"] != nil {
                settings.acknowledgementTimeout = .milliseconds(try integer(fields, "acknowledgementTimeoutMilliseconds", 1...600_000, in: "replication"))
            }
            replication = settings
        }
        var timings = ElectionTimings()
        if let value = top["timings"] {
            guard let fields = value as? [String: Any] else { throw ConfigError("timings: an object expected") }
            try onlyKeys(fields, ["leaseTTLSeconds", "keepaliveMilliseconds", "requestTimeoutMilliseconds", "fenceMarginMilliseconds"], in: "timings")
            if fields["leaseTTLSeconds"] != nil { timings.leaseTTL = .seconds(try integer(fields, "leaseTTLSeconds", 1...60)) }
            if fields["keepaliveMilliseconds"] != nil { timings.keepaliveInterval = .milliseconds(try integer(fields, "keepaliveMilliseconds", 1...60_000)) }
            if fields["requestTimeoutMilliseconds"] != nil { timings.requestTimeout = .milliseconds(try integer(fields, "requestTimeoutMilliseconds", 1...60_000)) }
            if fields["fenceMarginMilliseconds"] != nil { timings.fenceMargin = .milliseconds(try integer(fields, "fenceMarginMilliseconds", 1...60_000)) }
        }
        if let problem = timings.problem { throw ConfigError("timings: \(problem)") }
        return ClusterConfig(service: service, node: node, etcd: etcd, replicationAddress: replicationAddress, start: start,
                             address: address, replication: replication, timings: timings)
    }

    private static func onlyKeys(_ object: [String: Any], _ allowed: Set<String>, in place: String) throws {
        let unknown = Set(object.keys).subtracting(allowed).sorted()
        guard unknown.isEmpty else { throw ConfigError("\(place): unknown key \(unknown[0].prefix(40))") }
    }

    private static func string(_ object: [String: Any], _ key: String, max: Int) throws -> String {
        guard let value = object[key] as? String, !value.isEmpty, value.count <= max else {
            throw ConfigError("\(key): a string of 1 to \(max) characters expected")
        }
        return value
    }

    private static func isAbsolutePath(_ path: String) -> Bool {
        path.hasPrefix("/") && path.utf8.count <= 4096 && !path.contains("\0") && !path.split(separator: "/").contains("..")
    }

    private static func integer(_ object: [String: Any], _ key: String, _ range: ClosedRange<Int>, in place: String = "timings") throws -> Int {
        // JSONSerialization gives NSNumber for numbers and for booleans: accept whole numbers only.
        guard let number = object[key] as? NSNumber, String(cString: number.objCType) != "c",
              let value = Int(exactly: number.doubleValue), range.contains(value) else {
            throw ConfigError("\(place).\(key): a whole number in \(range.lowerBound)...\(range.upperBound) expected")
        }
        return value
    }

    private static func isIPv4CIDR(_ text: String) -> Bool {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let bits = Int(parts[1]), (0...32).contains(bits), parts[1].count <= 2 else { return false }
        let octets = parts[0].split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets.allSatisfy { $0.count <= 3 && !$0.isEmpty && $0.allSatisfy(\.isNumber) && (Int($0) ?? 256) <= 255 }
    }
}

/// A configuration that cannot be used: one line naming the field (domain `config`).
public struct ConfigError: MitosisFailure, Equatable {
    public let description: String
    init(_ description: String) { self.description = description }
    public var code: String { "config.invalid" }
}
