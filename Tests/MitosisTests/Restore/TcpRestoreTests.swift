import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel

/// `mitosis dump --kill` and `mitosis restore` of a server holding an established connection, in
/// a network namespace the test creates: the client, which never stops, keeps its connection.
@Suite("TCP restore")
struct TcpRestoreTests {
    static let nsenter = "/usr/bin/nsenter"

    /// Runs `mitosis ARGS…` inside the network namespace of `pid`.
    static func mitosis(in pid: Int32, _ arguments: [String]) async throws -> ToolRun {
        try await ToolRun(nsenter, ["--net=/proc/\(pid)/ns/net", ToolRun.mitosis] + arguments)
    }

    static func tables(in pid: Int32) async throws -> [String] {
        try await ToolRun(nsenter, ["--net=/proc/\(pid)/ns/net", NetworkLock.nftPath, "list", "tables"]).standardOutput
            .split(separator: "\n").map(String.init)
    }

    @Test("dump --kill then restore: the client's next request on the same connection is answered, queued bytes arrive exactly once",
          .enabled(if: FileManager.default.fileExists(atPath: NetworkLock.nftPath), "needs nft (Debian package nftables, scripts/setup)"),
          arguments: [InetFamily.ipv4, .ipv6])
    func dumpKillRestore(family: InetFamily) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try ScenarioProcess("tcpserver", [family.rawValue, "0"])
        defer { server.stop() }
        let client = try ScenarioProcess("tcpclient", [String(server.pid), family.rawValue, try server.fact("port")])
        defer { client.stop() }
        try server.send("accept")
        try client.send("send 0")
        try server.send("serve 1")
        try client.send("expect 0 0")
        #expect(client.facts["expect"] == "PASS")
        // Bytes the client does not read yet, then the server serves on its own: the answers to
        // `a` and `b` queue up behind them.
        try server.send("blast 300000")
        let blasted = try server.intFact("blasted")
        try server.send("detach")
        try client.send("send a")
        try client.send("send b")
        try await Task.sleep(for: .milliseconds(100))

        let image = scratch.path + "/image"
        let dump = try await Self.mitosis(in: client.pid, ["dump", String(server.pid), "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        let record = try #require(try CheckpointImage.open(image).manifest.restore, "\(dump.standardError)")
        let captured = try #require(record.connections?.first)
        #expect(record.connections?.count == 1)
        let held = try #require(record.networkLockTable)
        server.stop()  // reaps the killed original: its pid is free again
        // Killed in repair mode: no FIN, no RST; the held lock is the only table left.
        #expect(try await Self.tables(in: client.pid) == ["table inet \(held)"])
        try client.send("drain")
        #expect(client.facts["eof"] == "0" && client.facts["error"] == "0")
        // What the client's window let through before the dump arrived; the rest is queued in the
        // image, the answers to `a` and `b` last.
        let atClient = try client.intFact("received")
        #expect(captured.connection.sendQueue.count + atClient == blasted + "ANS a\nANS b\n".count)
        #expect(captured.connection.sendQueue.suffix(12) == Data("ANS a\nANS b\n".utf8))
        try client.send("send c")  // dropped by the lock, retransmitted after the restore

        let restore = try await Self.mitosis(in: client.pid, ["restore", image])
        #expect(restore.status == 0, "\(restore.standardError)")
        defer { kill(server.pid, SIGKILL) }  // the restored process, once the test is over
        #expect(try await Self.tables(in: client.pid) == [])
        try client.send("expect \(blasted) a,b,c")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
        print("tcp restore \(family): \(restore.standardOutput.trimmingCharacters(in: .newlines)); answers complete \(client.facts["waited_ms"] ?? "?") ms after the restore returned")
        // Still answering afterwards.
        try client.send("send d")
        try client.send("expect 0 d")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
    }

    @Test("a dump that keeps the process running gives its connections back: the client notices nothing")
    func dumpKeepsConnection() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try ScenarioProcess("tcpserver", ["ipv4", "0"])
        defer { server.stop() }
        let client = try ScenarioProcess("tcpclient", [String(server.pid), "ipv4", try server.fact("port")])
        defer { client.stop() }
        try server.send("accept")
        try server.send("detach")
        let dump = try await Self.mitosis(in: client.pid, ["dump", String(server.pid), "--images", scratch.path + "/image"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try CheckpointImage.open(scratch.path + "/image").manifest.restore?.connections?.count == 1)
        #expect(try await Self.tables(in: client.pid) == [])
        // Repair mode left as if never entered: the kernel resets SO_REUSEADDR, Mitosis puts it back.
        let pidfd = try Kernel.pidfdOpen(server.pid)
        let socket = try Kernel.pidfdGetfd(pidfd, 4)
        #expect(try TcpRepair.getInt(socket, SOL_SOCKET, SO_REUSEADDR) == 1)
        try socket.close()
        try pidfd.close()
        try client.send("send x")
        try client.send("expect 0 x")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
    }
}
