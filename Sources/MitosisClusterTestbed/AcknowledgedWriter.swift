import Foundation
import NIOCore
import NIOPosix

/// A client in the client namespace writing to redis through the service address, one `SET`
/// at a time, recording each acknowledged key with the time of its `+OK` (wall clock, to compare
/// with an epoch's creation time, and monotonic, to time an outage). A request unanswered within
/// 300 ms ends the connection; the next one opens another. The load is bounded: one request in
/// flight, a pause between requests.
package final class AcknowledgedWriter: @unchecked Sendable {
    package struct Ack: Sendable {
        package let key: Int
        package let at: Date
        package let instant: ContinuousClock.Instant
    }

    private let group: any EventLoopGroup
    private let lock = NSLock()
    private var acks: [Ack] = []
    private var failures = 0
    private var stopped = false

    package init(group: any EventLoopGroup) { self.group = group }

    package var acknowledged: [Ack] { lock.withLock { acks } }
    package var failed: Int { lock.withLock { failures } }
    package func stop() { lock.withLock { stopped = true } }
    private var isStopped: Bool { lock.withLock { stopped } }

    /// Writes keys 1, 2, 3… about every `pause` until stopped.
    package func run(pause: Duration = .milliseconds(5)) async {
        var key = 1
        while !isStopped {
            do {
                let channel = try await ClientBootstrap(group: group).connectTimeout(.milliseconds(300))
                    .connect(host: ClusterTestbed.serviceAddress, port: 6379) { channel in
                        channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                    }
                try await channel.executeThenClose { inbound, outbound in
                    var replies = inbound.makeAsyncIterator()
                    while !isStopped {
                        let value = "\(key)"
                        let command = "*3\r\n$3\r\nSET\r\n$\(value.utf8.count + 1)\r\nk\(value)\r\n$\(value.utf8.count)\r\n\(value)\r\n"
                        let timeout = channel.channel.eventLoop.scheduleTask(in: .milliseconds(300)) { channel.channel.close(promise: nil) }
                        try await outbound.write(ByteBuffer(string: command))
                        var reply = ""
                        while !reply.contains("\r\n") {
                            guard let chunk = try await replies.next() else { throw TestbedError("connection ended") }
                            reply += String(buffer: chunk)
                        }
                        timeout.cancel()
                        if reply.hasPrefix("+OK") {
                            lock.withLock { acks.append(Ack(key: key, at: Date(), instant: .now)) }
                        } else {
                            lock.withLock { failures += 1 }
                        }
                        key += 1
                        try await Task.sleep(for: pause)
                    }
                }
            } catch {
                // The request in flight is not acknowledged: it may or may not have been applied.
                lock.withLock { failures += 1 }
                key += 1
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    /// Which of `keys` the service does not hold: one pipelined `EXISTS` per key, in batches.
    /// Asked again for up to 10 s when the service address refuses or fails: the service may
    /// be moving once more (a promotion that failed hands the key to the next standby).
    package static func missing(_ keys: [Int], group: any EventLoopGroup) async throws -> [Int] {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            do {
                return try await missingOnce(keys, group: group)
            } catch {
                if ContinuousClock.now > deadline { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    private static func missingOnce(_ keys: [Int], group: any EventLoopGroup) async throws -> [Int] {
        let channel = try await ClientBootstrap(group: group).connectTimeout(.seconds(2))
            .connect(host: ClusterTestbed.serviceAddress, port: 6379) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var replies = inbound.makeAsyncIterator()
            var absent: [Int] = []
            for start in stride(from: 0, to: keys.count, by: 500) {
                let batch = Array(keys[start..<min(keys.count, start + 500)])
                var command = ""
                for key in batch { command += "*2\r\n$6\r\nEXISTS\r\n$\("k\(key)".utf8.count)\r\nk\(key)\r\n" }
                try await outbound.write(ByteBuffer(string: command))
                // One line per key. "\r\n" is one Character in Swift: count and split the bytes.
                var bytes: [UInt8] = []
                while bytes.count(where: { $0 == UInt8(ascii: "\n") }) < batch.count {
                    guard let chunk = try await replies.next() else { throw TestbedError("redis closed the connection") }
                    bytes += chunk.readableBytesView
                }
                let lines = bytes.split(separator: UInt8(ascii: "\n")).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
                for (key, line) in zip(batch, lines) {
                    switch line {
                    case ":1": continue
                    case ":0": absent.append(key)
                    default: throw TestbedError("EXISTS answered \(line.prefix(80))")
                    }
                }
            }
            return absent
        }
    }

    /// How many of `keys` the service holds.
    package static func existing(_ keys: [Int], group: any EventLoopGroup) async throws -> Int {
        keys.count - (try await missing(keys, group: group)).count
    }
}
