import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
import MitosisInspect
import MitosisModel
import MitosisTrace

/// A checkpoint session of a process with an established connection starts `nft` once, not at
/// every checkpoint (replication takes 20 a second): the same lock table serves every
/// checkpoint, holds no rule between them (the client is answered), and is gone with the session.
/// A process that runs on is captured without the lock (it would drop its clients' packets),
/// and a connection that changes meanwhile is told.
@Suite struct SessionNetworkLockTests {
    /// The `mitosis-lock-` tables in the namespace of `pid`.
    static func lockTables(in pid: Int32) async throws -> [String] {
        try await TcpRepairTests.tables(in: pid).split(separator: "\n").map(String.init).filter { $0.contains("mitosis-lock-") }
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: NetworkLock.nftPath), "needs nft (Debian package nftables, scripts/setup)"))
    func oneLockServesEveryCheckpointOfASession() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try await ScenarioProcess("repairserver", ["ipv4", "0"])
        defer { server.stop() }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), "ipv4", try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        try await server.send("detach")

        let session = try await CheckpointSession(pid: server.pid)
        var tables: [[String]] = []
        do {
            var parent: CheckpointParent?
            for index in 1...3 {
                let result = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/\(index)"), parent: parent)
                parent = .previous(path: "../\(index)")
                #expect(result.manifest.restore?.connections?.count == 1, "checkpoint \(index) captured the connection")
                // A quiet connection of a process that runs on: captured without the lock.
                #expect(!result.connectionsLocked, "checkpoint \(index) locked the network")
                tables.append(try await Self.lockTables(in: client.pid))
                // Unlocked between checkpoints: the client is answered (`expect` forgets what it
                // compared, so each exchange expects its own answer only).
                try await client.send("send \(index)")
                try await client.send("expect 0 \(index)")
                #expect(client.facts["expect"] == "PASS", "answered after checkpoint \(index)")
            }
        } catch {
            await session.stop()
            throw error
        }
        // One table, the same one, through the session.
        #expect(tables[0].count == 1, "\(tables)")
        #expect(tables.allSatisfy { $0 == tables[0] }, "\(tables)")
        await session.stop()
        var left = try await Self.lockTables(in: client.pid)
        for _ in 0..<50 where !left.isEmpty {
            try await Task.sleep(for: .milliseconds(100))
            left = try await Self.lockTables(in: client.pid)
        }
        #expect(left.isEmpty, "\(left)")
        try await client.send("send 9")
        try await client.send("expect 0 9")
        #expect(client.facts["expect"] == "PASS")
    }

    /// The check that replaces the lock: a capture taken without it reads the same when taken
    /// again, until a segment arrives (the client's request, left unread in the server's queue).
    @Test func anUnlockedCaptureSeesTheConnectionChange() async throws {
        let server = try await ScenarioProcess("repairserver", ["ipv4", "0"])
        defer { server.stop() }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), "ipv4", try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        let target = try TargetProcess(pid: server.pid)
        let capture = try ConnectionCapture(target: target, descriptors: try ProcessReader.descriptors(target), lockNetwork: false)
        defer { capture.resume() }
        #expect(capture.connections.count == 1)
        #expect(capture.unchanged(sockets: []), "nothing came in")
        // The socket says ESTABLISHED but was not captured: not one instant.
        let socket = SocketRestoreState(inode: try #require(capture.connections.first).inode, domain: 2, type: Linux.SOCK_STREAM,
                                        protocol: 6, local: nil, peer: nil, listening: false, backlog: nil, tcpState: 1, options: [])
        #expect(capture.unchanged(sockets: [socket]), "a captured socket is no gap")
        #expect(!capture.unchanged(sockets: [SocketRestoreState(inode: 1, domain: 2, type: Linux.SOCK_STREAM, protocol: 6, local: nil,
                                                                  peer: nil, listening: false, backlog: nil, tcpState: 1, options: [])]))
        try await client.send("send 1")
        #expect(client.facts["sent"] == "6")
        var unchanged = capture.unchanged(sockets: [])
        for _ in 0..<50 where unchanged {
            try await Task.sleep(for: .milliseconds(20))
            unchanged = capture.unchanged(sockets: [])
        }
        #expect(!unchanged, "the request in the receive queue is a change")
    }
}
