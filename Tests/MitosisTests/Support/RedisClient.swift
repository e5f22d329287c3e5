import Foundation
import Glibc

/// A minimal RESP2 client for tests against a real redis-server on loopback: pipelined
/// commands, replies parsed as the protocol defines them. Blocking: use it inside `Blocking.run`.
final class RedisClient {
    enum Reply: Equatable {
        case simple(String)
        case error(String)
        case integer(Int)
        case bulk([UInt8]?)
        case array([Reply]?)
    }

    struct ProtocolError: Error, CustomStringConvertible { var description: String }

    private let fd: Int32
    private var buffer: [UInt8] = []
    private var position = 0

    init(host: String = "127.0.0.1", port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ProtocolError(description: "socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { throw ProtocolError(description: "not an IPv4 address: \(host)") }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        // No close here: a class whose properties are all set runs deinit when init throws.
        guard result == 0 else { throw ProtocolError(description: "connect to \(host):\(port): errno \(errno)") }
    }

    /// A client on a socket connected already (made in another network namespace, say).
    init(connected fd: Int32) { self.fd = fd }

    /// The socket, to read its state (`TCP_INFO`, addresses) from outside the protocol.
    var socketDescriptor: Int32 { fd }

    /// Closes the connection with a reset (`SO_LINGER` 0): the socket is gone at once, as when
    /// the client's host dies. Any later call fails.
    func abort() throws {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        guard setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size)) == 0 else {
            throw ProtocolError(description: "SO_LINGER: errno \(errno)")
        }
        close(fd)
        aborted = true
    }

    private var aborted = false

    /// Closes the connection the ordinary way (a FIN): the server's socket goes to CLOSE-WAIT
    /// until the server closes it. Any later call fails.
    func hangUp() {
        close(fd)
        aborted = true
    }

    deinit { if !aborted { close(fd) } }

    /// Sends every command at once, then reads one reply per command.
    func pipeline(_ commands: [[String]]) throws -> [Reply] {
        var out: [UInt8] = []
        for command in commands {
            out += Array("*\(command.count)\r\n".utf8)
            for argument in command {
                let bytes = Array(argument.utf8)
                out += Array("$\(bytes.count)\r\n".utf8) + bytes + [13, 10]
            }
        }
        var sent = 0
        while sent < out.count {
            let count = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { throw ProtocolError(description: "send: errno \(errno)") }
            sent += count
        }
        return try commands.map { _ in try reply() }
    }

    func call(_ command: String...) throws -> Reply { try pipeline([command])[0] }

    /// Reads more from the socket into `buffer` (dropping what was consumed).
    private func fill() throws {
        if position > 0 {
            buffer.removeFirst(position)
            position = 0
        }
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { throw ProtocolError(description: "connection closed (errno \(errno))") }
        buffer += chunk[..<count]
    }

    /// The next `count` bytes.
    private func take(_ count: Int) throws -> ArraySlice<UInt8> {
        while buffer.count - position < count { try fill() }
        defer { position += count }
        return buffer[position..<position + count]
    }

    /// The next line, without its CR LF.
    private func line() throws -> String {
        while true {
            if let end = buffer[position...].firstIndex(of: 13), end + 1 < buffer.count {
                defer { position = end + 2 }
                return String(decoding: buffer[position..<end], as: UTF8.self)
            }
            try fill()
        }
    }

    private func reply() throws -> Reply {
        let text = try line()
        guard let kind = text.utf8.first else { throw ProtocolError(description: "empty reply line") }
        let rest = String(text.dropFirst())
        switch kind {
        case UInt8(ascii: "+"): return .simple(rest)
        case UInt8(ascii: "-"): return .error(rest)
        case UInt8(ascii: ":"): return .integer(Int(rest) ?? 0)
        case UInt8(ascii: "$"):
            guard let length = Int(rest), length >= 0 else { return .bulk(nil) }
            let bytes = Array(try take(length + 2).dropLast(2))
            return .bulk(bytes)
        case UInt8(ascii: "*"):
            guard let count = Int(rest), count >= 0 else { return .array(nil) }
            return .array(try (0..<count).map { _ in try reply() })
        default:
            throw ProtocolError(description: "unexpected reply type \(kind)")
        }
    }

    /// A digest of the whole keyspace as a client sees it: every key (SCAN), sorted, with its
    /// DUMP serialization (type, value and encoding version), hashed together; and the key count.
    func keyspaceDigest(hash: ([UInt8]) -> UInt64) throws -> (keys: Int, digest: UInt64) {
        var keys: [String] = []
        var cursor = "0"
        repeat {
            guard case .array(let parts?) = try call("SCAN", cursor, "COUNT", "1000"), parts.count == 2,
                  case .bulk(let next?) = parts[0], case .array(let batch?) = parts[1] else { throw ProtocolError(description: "SCAN reply") }
            cursor = String(decoding: next, as: UTF8.self)
            for case .bulk(let key?) in batch { keys.append(String(decoding: key, as: UTF8.self)) }
        } while cursor != "0"
        keys = Array(Set(keys)).sorted()  // SCAN may return a key more than once
        var all: [UInt8] = []
        for start in stride(from: 0, to: keys.count, by: 1000) {
            let batch = Array(keys[start..<min(start + 1000, keys.count)])
            for (key, reply) in zip(batch, try pipeline(batch.map { ["DUMP", $0] })) {
                guard case .bulk(let value?) = reply else { throw ProtocolError(description: "DUMP \(key): \(reply)") }
                all += Array(key.utf8) + [0] + value
            }
        }
        return (keys.count, hash(all))
    }
}
