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

    /// The tables once every `mitosis-lock-` table's owner has exited: `nft` sees its stdin close
    /// when Mitosis dies, and exits (on a loaded machine, within a second or two).
    static func tablesOnceOwnersExit(in pid: Int32) async throws -> [String] {
        var tables = try await self.tables(in: pid)
        for _ in 0..<50 where tables.contains(where: { $0.contains("mitosis-lock-") }) {
            try await Task.sleep(for: .milliseconds(100))
            tables = try await self.tables(in: pid)
        }
        return tables
    }

    @Test("dump --kill then restore: the client's next request on the same connection is answered, queued bytes arrive exactly once",
          .enabled(if: FileManager.default.fileExists(atPath: NetworkLock.nftPath), "needs nft (Debian package nftables, scripts/setup)"),
          arguments: [InetFamily.ipv4, .ipv6])
    func dumpKillRestore(family: InetFamily) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try await ScenarioProcess("repairserver", [family.rawValue, "0"])
        defer { server.stop() }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), family.rawValue, try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        try await client.send("send 0")
        try await server.send("serve 1")
        try await client.send("expect 0 0")
        #expect(client.facts["expect"] == "PASS")
        // Bytes the client does not read yet, then the server serves on its own: the answers to
        // `a` and `b` queue up behind them.
        try await server.send("blast 300000")
        let blasted = try server.intFact("blasted")
        try await server.send("detach")
        try await client.send("send a")
        try await client.send("send b")
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
        try await client.send("drain")
        #expect(client.facts["eof"] == "0" && client.facts["error"] == "0")
        // What the client's window let through before the dump arrived; the rest is queued in the
        // image, the answers to `a` and `b` last.
        let atClient = try client.intFact("received")
        #expect(captured.connection.sendQueue.count + atClient == blasted + "ANS a\nANS b\n".count)
        #expect(captured.connection.sendQueue.suffix(12) == Data("ANS a\nANS b\n".utf8))
        try await client.send("send c")  // dropped by the lock, retransmitted after the restore

        let restore = try await Self.mitosis(in: client.pid, ["restore", image])
        #expect(restore.status == 0, "\(restore.standardError)")
        defer { kill(server.pid, SIGKILL) }  // the restored process, once the test is over
        #expect(try await Self.tables(in: client.pid) == [])
        try await client.send("expect \(blasted) a,b,c")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
        print("tcp restore \(family): \(restore.standardOutput.trimmingCharacters(in: .newlines)); answers complete \(client.facts["waited_ms"] ?? "?") ms after the restore returned")
        // Still answering afterwards.
        try await client.send("send d")
        try await client.send("expect 0 d")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
    }

    @Test("a dump that keeps the process running gives its connections back: the client notices nothing")
    func dumpKeepsConnection() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try await ScenarioProcess("repairserver", ["ipv4", "0"])
        defer { server.stop() }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), "ipv4", try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        try await server.send("detach")
        let dump = try await Self.mitosis(in: client.pid, ["dump", String(server.pid), "--images", scratch.path + "/image"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try CheckpointImage.open(scratch.path + "/image").manifest.restore?.connections?.count == 1)
        #expect(try await Self.tables(in: client.pid) == [])
        // Repair mode left as if never entered: the kernel resets SO_REUSEADDR, Mitosis puts it back.
        let pidfd = try Kernel.pidfdOpen(server.pid)
        let socket = try Kernel.pidfdGetfd(pidfd, 4)
        #expect(try Kernel.socketOption(socket, level: SOL_SOCKET, name: SO_REUSEADDR) == 1)
        try socket.close()
        try pidfd.close()
        try await client.send("send x")
        try await client.send("expect 0 x")
        #expect(client.facts["expect"] == "PASS", "\(client.facts)")
    }

    /// A server with one connection, killed by `dump --kill` into `image`, its pid still held by
    /// its zombie (the test has not reaped it) unless `reap`.
    static func movedServer(image: String, reap: Bool) async throws -> (server: ScenarioProcess, client: ScenarioProcess, held: String) {
        let server = try await ScenarioProcess("repairserver", ["ipv4", "0"])
        let client = try await ScenarioProcess("repairclient", [String(server.pid), "ipv4", try server.fact("port")])
        try await server.send("accept")
        try await server.send("detach")
        let dump = try await mitosis(in: client.pid, ["dump", String(server.pid), "--images", image, "--kill"])
        guard dump.status == 0, let held = try CheckpointImage.open(image).manifest.restore?.networkLockTable else {
            throw ScenarioError.protocolError("dump failed: \(dump.standardError)")
        }
        if reap { server.stop() }
        return (server, client, held)
    }

    @Test("a restore that fails lifts the lock: no rule is left, and the client sees a reset rather than a hang")
    func failedRestoreUnlocks() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let (server, client, _) = try await Self.movedServer(image: scratch.path + "/image", reap: false)
        defer { server.stop(); client.stop() }
        let restore = try await Self.mitosis(in: client.pid, ["restore", scratch.path + "/image"])
        #expect(restore.status == 1)
        #expect(restore.standardError.hasPrefix("mitosis: pid \(server.pid) is taken by process \(server.pid)"), "\(restore.standardError)")
        #expect(try await Self.tables(in: client.pid) == [])
        try await client.send("send x")
        try await Task.sleep(for: .milliseconds(100))
        try await client.send("drain")
        #expect(client.facts["error"] == String(ECONNRESET))
    }

    @Test("kill -9 of mitosis restore at any moment leaves no lock of its own and no half-built process",
          arguments: [0, 150, 300, 400, 500, 650, 800])
    func killedRestore(after milliseconds: Int) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let (server, client, held) = try await Self.movedServer(image: scratch.path + "/image", reap: true)
        defer { server.stop(); client.stop() }
        let restore = try ToolRun.start(Self.nsenter, ["--net=/proc/\(client.pid)/ns/net", ToolRun.mitosis, "restore", scratch.path + "/image"])
        try await Task.sleep(for: .milliseconds(milliseconds))
        restore.signal(SIGKILL)
        let status = try await Blocking.run { restore.wait() }
        let tables = try await Self.tablesOnceOwnersExit(in: client.pid)
        // Only the dump's held lock may remain, and only if the restore was killed before lifting it.
        #expect(tables.allSatisfy { $0 == "table inet \(held)" }, "\(tables)")
        let stat = (try? String(contentsOfFile: "/proc/\(server.pid)/stat", encoding: .utf8)) ?? ""
        print("restore killed after \(milliseconds) ms: exit \(ChildProcess.exitCode(of: status)), held lock \(tables.isEmpty ? "lifted" : "still there")")
        let state = stat.split(separator: ")").last?.split(separator: " ").first
        let tracer = (try? String(contentsOfFile: "/proc/\(server.pid)/status", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("TracerPid:") }?.split(separator: "\t").last
        if stat.isEmpty || state == "Z" || state == "X" {
            // Killed while building: the husk died with its tracer (PTRACE_O_EXITKILL).
            #expect(ChildProcess.exitCode(of: status) == 137)
        } else {
            // Finished (the kill, if any, came after the detach): restored, running, untraced.
            #expect(tracer == "0" && state != "t" && tables.isEmpty, "\(stat)")
            kill(server.pid, SIGKILL)
        }
        if !tables.isEmpty { try NetworkLock.remove(held, namespacePath: "/proc/\(client.pid)/ns/net") }
    }

    @Test("kill -9 of mitosis dump --kill at any moment: no lock of its own is left; the server is either running with its connection free or dead with the held lock for the restore",
          arguments: [0, 200, 350, 400, 450, 500, 550, 600, 800])
    func killedDump(after milliseconds: Int) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try await ScenarioProcess("repairserver", ["ipv4", "0"])
        defer { server.stop() }
        let client = try await ScenarioProcess("repairclient", [String(server.pid), "ipv4", try server.fact("port")])
        defer { client.stop() }
        try await server.send("accept")
        try await server.send("detach")
        let dump = try ToolRun.start(Self.nsenter, ["--net=/proc/\(client.pid)/ns/net", ToolRun.mitosis, "dump", String(server.pid),
                                                    "--images", scratch.path + "/image", "--kill"])
        try await Task.sleep(for: .milliseconds(milliseconds))
        dump.signal(SIGKILL)
        let status = ChildProcess.exitCode(of: try await Blocking.run { dump.wait() })
        let tables = try await Self.tablesOnceOwnersExit(in: client.pid)
        #expect(!tables.contains { $0.contains("mitosis-lock-") }, "\(tables)")
        let alive = server.isAlive
        print("dump --kill killed after \(milliseconds) ms: exit \(status), server \(alive ? "running" : "killed"), tables \(tables)")
        if alive {
            // Never got to the kill: untraced, its connection free and answering.
            #expect(tables.isEmpty)
            try await client.send("send x")
            try await client.send("expect 0 x")
            #expect(client.facts["expect"] == "PASS", "\(client.facts)")
        } else if let table = tables.first?.split(separator: " ").last {
            // Killed by the dump: the held lock waits for a restore, and the client sees nothing.
            #expect(tables.count == 1 && table.hasPrefix("mitosis-hold-"), "\(tables)")
            try await client.send("drain")
            #expect(client.facts["eof"] == "0" && client.facts["error"] == "0")
            try NetworkLock.remove(String(table), namespacePath: "/proc/\(client.pid)/ns/net")
        } else {
            // Killed between the kill and the held lock: nothing locked, the client sees a reset.
            try await client.send("send x")
            try await Task.sleep(for: .milliseconds(100))
            try await client.send("drain")
            #expect(client.facts["error"] == String(ECONNRESET))
        }
    }
}
