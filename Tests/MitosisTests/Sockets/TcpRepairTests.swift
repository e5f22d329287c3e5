import Foundation
import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisModel
import MitosisTrace
import SystemPackage

/// An established connection taken out of one process and rebuilt in another with TCP repair,
/// without restore around it: the server's state is captured through a `pidfd_getfd` copy while
/// it is frozen, the network is locked, the server is killed with its socket in repair mode, and
/// a new process's fresh socket becomes the same connection. The client, which never stops,
/// must notice nothing: same connection, no reset, every byte exactly once.
@Suite("TCP repair")
struct TcpRepairTests {
    /// The byte the scenario's `blast` writes at `offset`.
    static func pattern(_ offset: Int) -> UInt8 { UInt8((offset * 7 + 3) % 251) }

    /// Established connections in the namespace of `pid`, as `ss` shows them.
    static func established(in pid: Int32) async throws -> [String] {
        let run = try await ToolRun("/usr/bin/nsenter", ["--net=/proc/\(pid)/ns/net", "ss", "-tnH", "state", "established"])
        return run.standardOutput.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
    }

    /// Tables in the namespace of `pid`, as `nft list tables` shows them.
    static func tables(in pid: Int32) async throws -> String {
        try await ToolRun("/usr/bin/nsenter", ["--net=/proc/\(pid)/ns/net", NetworkLock.nftPath, "list", "tables"]).standardOutput
    }

    @Test("a connection moves to another process: the client's next request is answered, queued bytes arrive exactly once",
          .enabled(if: FileManager.default.fileExists(atPath: NetworkLock.nftPath), "needs nft (Debian package nftables, scripts/setup)"),
          arguments: [InetFamily.ipv4, .ipv6])
    func connectionMoves(family: InetFamily) async throws {
        let loopback = family == .ipv4 ? "127.0.0.1" : "::1"
        let server = try await ScenarioProcess("repairserver", [family.rawValue, "0"])
        defer { server.stop() }
        let port = try server.fact("port")
        let client = try await ScenarioProcess("repairclient", [String(server.pid), family.rawValue, port])
        defer { client.stop() }
        let clientPort = UInt16(try client.intFact("port"))
        try await server.send("accept")

        // An exchange, then two requests the server does not read yet.
        try await client.send("send 0")
        try await server.send("serve 1")
        try await client.send("expect 0 0")
        #expect(client.facts["expect"] == "PASS")
        try await client.send("send a")
        try await client.send("send b")
        try await Task.sleep(for: .milliseconds(50))

        let local = SocketEndpoint(address: loopback, port: UInt16(port)!)
        let remote = SocketEndpoint(address: loopback, port: clientPort)
        let namespace = "/proc/\(client.pid)/ns/net"
        // Written while the client's acknowledgments are lost (a rule of the test's own drops
        // them), then under the lock: sent as far as the client's small window allows but
        // never acknowledged, the rest never sent (a drop at the output hook leaves it unsent).
        let nft = ["--net=\(namespace)", NetworkLock.nftPath]
        #expect(try await ToolRun("/usr/bin/nsenter", nft + ["add table inet mitosis-test-acks { chain input { type filter hook input priority raw; tcp sport \(clientPort) drop; }; }"]).status == 0)
        try await server.send("blast 100000")
        try await Task.sleep(for: .milliseconds(50))
        let lock = try await Blocking.run { try NetworkLock(namespacePath: namespace) }
        defer { lock.release() }
        let locking = ContinuousClock.now
        try await Blocking.run { try lock.lock([(family, local, remote)]) }
        let lockTime = ContinuousClock.now - locking
        #expect(try await Self.tables(in: client.pid).contains("table inet \(lock.table)"))
        #expect(try await ToolRun("/usr/bin/nsenter", nft + ["delete table inet mitosis-test-acks"]).status == 0)
        try await server.send("blast 300000")
        let blasted = try server.intFact("blasted")
        #expect(blasted > 0)

        let pidfd = try Kernel.pidfdOpen(server.pid)
        let original = try Kernel.pidfdGetfd(pidfd, 4)
        try? pidfd.close()
        let connection = try await withFrozenProcess(server.pid) { _ in
            try TcpRepair.capture(original, stayInRepair: true)
        }
        #expect(connection.family == family)
        #expect(connection.local == local && connection.remote == remote)
        #expect(connection.receiveQueue == Data("REQ a\nREQ b\n".utf8))
        #expect(connection.sendQueue.count == blasted)
        #expect(connection.sendQueue == Data((0..<blasted).map(Self.pattern)))
        let sentCount = blasted - Int(connection.unsentCount)
        #expect(sentCount > 0 && sentCount < blasted)  // some went out unacknowledged, some never
        #expect(connection.socketOptions.noDelay && connection.socketOptions.keepAlive && connection.socketOptions.reuseAddress)
        #expect(connection.options.maxSegmentSize > 0 && connection.problems() == [])
        // An image holds it as JSON.
        let decoded = try JSONDecoder().decode(TcpConnection.self, from: JSONEncoder().encode(connection))
        #expect(decoded == connection)

        // The original dies with its socket in repair mode: the kernel sends nothing.
        server.stop()
        try original.close()
        try await Task.sleep(for: .milliseconds(100))
        try await client.send("drain")
        // The client holds what reached it (its acknowledgments were lost), and sees no end, no reset.
        #expect(client.facts["eof"] == "0" && client.facts["error"] == "0")
        let atClient = try client.intFact("received")
        #expect(atClient <= sentCount)
        let alone = try await Self.established(in: client.pid)
        #expect(alone.count == 1 && alone.first?.hasSuffix("\(remote) \(local)") == true, "\(alone)")
        // A request written while the connection has no server: dropped by the lock, retransmitted later.
        try await client.send("send c")
        #expect(client.facts["sent"] == "6")

        // A new process's fresh socket becomes the connection.
        let adopter = try await ScenarioProcess("repairadopt", [String(client.pid), family.rawValue])
        defer { adopter.stop() }
        let adopterPidfd = try Kernel.pidfdOpen(adopter.pid)
        let socket = try Kernel.pidfdGetfd(adopterPidfd, 3)
        try? adopterPidfd.close()
        try TcpRepair.restore(socket, connection)
        try TcpRepair.finish(socket, connection)
        #expect(try Kernel.socketOption(socket, level: SOL_SOCKET, name: SO_REUSEADDR) == 1 && Kernel.socketOption(socket, level: SOL_SOCKET, name: SO_KEEPALIVE) == 1)
        try socket.close()
        let unlocked = ContinuousClock.now
        lock.release()
        #expect(try await !Self.tables(in: client.pid).contains("mitosis"))

        try await adopter.send("serve 3")
        #expect(adopter.facts["served"] == "ok")
        try await client.send("expect \(blasted) a,b,c")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
        print("tcp repair \(family): \(blasted) bytes queued (\(sentCount) sent and unacknowledged, \(connection.unsentCount) unsent, \(atClient) of them already at the client), locked in \(lockTime) (nft already started), answers complete \(ContinuousClock.now - unlocked) after the unlock (client waited \(client.facts["waited_ms"] ?? "?") ms)")
        let pair = try await Self.established(in: client.pid)
        #expect(pair.count == 2, "\(pair)")
    }

    @Test("without the network lock, the client's next request is answered with a reset",
          arguments: [InetFamily.ipv4])
    func withoutLock(family: InetFamily) async throws {
        let server = try await ScenarioProcess("repairserver", [family.rawValue, "0"])
        defer { server.stop() }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), family.rawValue, try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        let pidfd = try Kernel.pidfdOpen(server.pid)
        let original = try Kernel.pidfdGetfd(pidfd, 4)
        try? pidfd.close()
        _ = try await withFrozenProcess(server.pid) { _ in try TcpRepair.capture(original, stayInRepair: true) }
        server.stop()
        try original.close()
        try await Task.sleep(for: .milliseconds(100))
        try await client.send("drain")
        #expect(client.facts["eof"] == "0" && client.facts["error"] == "0")  // closing in repair mode sent nothing
        try await client.send("send c")
        try await Task.sleep(for: .milliseconds(100))
        try await client.send("drain")
        #expect(client.facts["error"] == String(ECONNRESET))
    }

    @Test("a socket that is not a connection is refused with the step that failed, and keeps working")
    func notAConnection() async throws {
        let server = try await ScenarioProcess("repairserver", ["ipv4", "0"])
        defer { server.stop() }
        let pidfd = try Kernel.pidfdOpen(server.pid)
        let listener = try Kernel.pidfdGetfd(pidfd, 3)
        try? pidfd.close()
        defer { try? listener.close() }
        #expect(throws: TcpRepair.Failure(step: "reading the peer's address", detail: "\(Errno.socketNotConnected)")) {
            try TcpRepair.capture(listener, stayInRepair: false)
        }
        // The kernel refuses repair mode on a listener: nothing was changed.
        #expect(throws: Errno.notPermitted) { try TcpRepair.setRepair(listener, .on) }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), "ipv4", try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        #expect(try server.intFact("fd") == 4)
    }

    @Test("hostile connection records are refused before any socket is touched")
    func hostileRecords() throws {
        let sound = TcpConnection(
            family: .ipv6, local: .init(address: "::1", port: 80), remote: .init(address: "2001:db8::ffff:1.2.3.4", port: 5000),
            sendSequence: 1, receiveSequence: 2, sendQueue: Data([1, 2, 3]), unsentCount: 1, receiveQueue: Data(),
            options: .init(maxSegmentSize: 1460, sendWindowScale: 7, receiveWindowScale: 7, selectiveAcknowledgments: true, timestamps: true),
            timestamp: 99, window: nil,
            socketOptions: .init(noDelay: false, cork: false, keepAlive: false, keepIdle: 7200, keepInterval: 75, keepCount: 9,
                                 reuseAddress: false, sendBuffer: 16384, receiveBuffer: 131072),
            nonBlocking: true)
        #expect(sound.problems() == [])
        var bad = sound
        bad.family = .ipv4
        bad.local.port = 0
        bad.unsentCount = 4
        bad.options.sendWindowScale = 15
        bad.timestamp = nil
        bad.socketOptions.sendBuffer = -1
        #expect(bad.problems() == [
            "local address '::1' is not an ipv4 address", "local port is 0",
            "remote address '2001:db8::ffff:1.2.3.4' is not an ipv4 address",
            "4 unsent bytes but a send queue of 3", "window scale 15 is above 14",
            "timestamps option and timestamp value disagree", "send buffer of -1 bytes is out of 0…134217728",
        ])
        #expect(throws: TcpRepair.Failure.self) { try TcpRepair.restore(FileDescriptor(rawValue: -1), bad) }
    }

    @Test("addresses parse as the kernel would read them, and nothing else does",
          arguments: [
            ("127.0.0.1", InetFamily.ipv4, [127, 0, 0, 1] as [UInt8]?), ("255.255.255.255", .ipv4, [255, 255, 255, 255]),
            ("256.0.0.1", .ipv4, nil), ("1.2.3", .ipv4, nil), ("1.2.3.4.5", .ipv4, nil), ("01.2.3.4", .ipv4, nil),
            ("", .ipv4, nil), ("::1", .ipv6, [UInt8](repeating: 0, count: 15) + [1]), ("::", .ipv6, [UInt8](repeating: 0, count: 16)),
            ("::ffff:10.0.0.1", .ipv6, [UInt8](repeating: 0, count: 10) + [255, 255, 10, 0, 0, 1]),
            ("fe80::1:2", .ipv6, [0xfe, 0x80] + [UInt8](repeating: 0, count: 10) + [0, 1, 0, 2]),
            ("1::2::3", .ipv6, nil), ("12345::", .ipv6, nil), ("1:2:3:4:5:6:7:8:9", .ipv6, nil), (":::", .ipv6, nil),
            ("g::1", .ipv6, nil), ("1:2:3:4:5:6:7:8", .ipv6, [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]),
          ])
    func addresses(text: String, family: InetFamily, bytes: [UInt8]?) {
        #expect(InetAddress.bytes(text, family: family) == bytes)
    }
}
