import Foundation
import Logging
import MitosisKernel
import NIOCore
import NIOPosix
import Synchronization

/// The standby's control socket, `DIR/control` (a unix stream socket: connecting needs write
/// permission on it, which the umask leaves to its owner): how `mitosis promote` reaches the standby that owns the warm clone (a tracer
/// cannot hand its tracee over: the process holding the husk must finish it). One request
/// line, one JSON answer line:
///
///     promote   → {"result": PromotionResult} or {"error": "…"}; the standby then stops
///     status    → {"status": WarmStatus}
///
/// Standbys running in this process are also registered by directory, so that a promotion
/// asked in-process (the cluster daemon) goes to them directly.
enum StandbyControl {
    /// The answer to a request.
    struct Reply: Codable, Sendable {
        var result: PromotionResult?
        var status: WarmStatus?
        var error: String?
    }

    typealias Connection = NIOAsyncChannel<ByteBuffer, ByteBuffer>
    typealias Server = NIOAsyncChannel<Connection, Never>

    static let requestLimit = 64

    /// Listens on `DIR/control` (a stale file from a dead standby is replaced: the directory lock
    /// is held). Nil, with a warning, when it cannot: promotion then stops the standby and
    /// restores cold.
    static func bind(_ standby: Standby) async -> Server? {
        let path = standby.store.directory.controlPath
        do {
            let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true) { channel in
                    channel.eventLoop.makeCompletedFuture { try Connection(wrappingChannelSynchronously: channel) }
                }
            return server
        } catch {
            standby.logger.warning("standby: no control socket at \(path) (\(error)); promote will stop this standby and restore cold")
            return nil
        }
    }

    static func removeSocket(_ standby: Standby) {
        try? Kernel.unlinkAt(nil, standby.store.directory.controlPath)
    }

    /// Answers requests until cancelled.
    static func serve(_ server: Server, standby: Standby) async {
        await withDiscardingTaskGroup { group in
            do {
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask { await answer(connection, standby: standby) }
                    }
                }
            } catch {
                if !Task.isCancelled { standby.logger.warning("standby: control socket failed: \(error)") }
            }
            group.cancelAll()
        }
    }

    private static func answer(_ connection: Connection, standby: Standby) async {
        try? await connection.executeThenClose { inbound, outbound in
            var request: [UInt8] = []
            for try await buffer in inbound {
                request += buffer.readableBytesView
                if request.contains(0x0a) || request.count > requestLimit { break }
            }
            let line = String(decoding: request.prefix { $0 != 0x0a }.prefix(requestLimit), as: UTF8.self)
            var reply = Reply()
            // After a promotion the standby stops, once the answer is out (stopping cancels this task).
            var ending = false
            defer { if ending { standby.endRun() } }
            switch line {
            case "status":
                reply.status = await standby.warm?.currentStatus() ?? WarmStatus(reason: "the standby keeps no warm clone (--warm)")
            case "promote":
                ending = true
                do { reply.result = try await standby.promote(endingRun: false) } catch { reply.error = "\(error)" }
            default:
                reply.error = "unknown request"
            }
            // Foundation's coders as they are: the field names round-trip (`imageID`).
            let encoded = (try? JSONEncoder().encode(reply)).map { Array($0) } ?? Array(#"{"error":"unencodable reply"}"#.utf8)
            try await outbound.write(ByteBuffer(bytes: encoded + [0x0a]))
        }
    }

    /// Sends `command` to the standby serving `directory`; nil when none listens there.
    static func request(_ directory: StandbyDirectory, _ command: String, timeout: Duration) async throws -> Reply? {
        let path = directory.controlPath
        guard (try? Kernel.linkStatusAt(nil, path))?.type == .socket else { return nil }
        let connection: Connection
        do {
            connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(unixDomainSocketPath: path) { channel in
                    channel.eventLoop.makeCompletedFuture { try Connection(wrappingChannelSynchronously: channel) }
                }
        } catch {
            return nil  // a socket left by a standby that died: nobody listens
        }
        return try await withThrowingTaskGroup(of: Reply?.self) { group in
            group.addTask {
                try await connection.executeThenClose { inbound, outbound in
                    try await outbound.write(ByteBuffer(bytes: Array((command + "\n").utf8)))
                    var answer: [UInt8] = []
                    for try await buffer in inbound {
                        answer += buffer.readableBytesView
                        if answer.contains(0x0a) { break }
                        guard answer.count < 1 << 20 else { throw ReplicationError.promotion("the standby's answer is too long") }
                    }
                    guard answer.contains(0x0a) else { throw ReplicationError.promotion("the standby closed its control socket without answering") }
                    do { return try JSONDecoder().decode(Reply.self, from: Data(answer.prefix { $0 != 0x0a })) } catch {
                        throw ReplicationError.promotion("the standby's answer does not decode")
                    }
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw ReplicationError.promotion("the standby did not answer '\(command)' within \(timeout)")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    // MARK: Standbys of this process

    private static let running = Mutex<[String: Standby]>([:])

    private static func key(_ path: String) -> String { (try? Kernel.canonicalPath(path)) ?? path }

    static func register(_ standby: Standby) {
        running.withLock { $0[key(standby.options.directory)] = standby }
    }

    static func unregister(_ standby: Standby) {
        running.withLock { map in
            let key = key(standby.options.directory)
            if map[key] === standby { map[key] = nil }
        }
    }

    static func standby(serving path: String) -> Standby? {
        running.withLock { $0[key(path)] }
    }
}
