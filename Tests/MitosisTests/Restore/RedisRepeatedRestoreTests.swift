import Foundation
import Glibc
import SystemPackage
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// Debian's redis-server moved three times in a row (checkpoint with the connections, kill,
/// restore), as a failover chain moves it: each image is taken of the process the previous one
/// restored, with clients connected through a restored listener. During the second freeze one
/// client hangs up (its FIN: the server's socket goes CLOSE-WAIT) and another resets its
/// connection (the server's socket goes CLOSE, not yet closed by redis): the states a client that
/// times out on a frozen server leaves. Each image must hold every connection's repair state and
/// be restorable; the survivors' next commands on their same connections get the right answers,
/// and the keyspace is byte-exact after each restore.
///
/// Before the fix, the second image named the CLOSE-WAIT socket "a TCP connection … whose repair
/// state the image does not hold", and the reset one as a bound socket whose restore failed with
/// EADDRINUSE beside the listener (`mitosis-bench failover`, `StatefulFailoverTests`).
@Suite(.serialized) struct RedisRepeatedRestoreTests {
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: RedisRestoreTests.server), "needs Debian's redis-server (scripts/setup installs it)"))
    func restoredThreeTimesWithClientsThatHangUpWhileFrozen() async throws {
        let hosts = try await BridgedHosts(["client", "a"])
        do {
            try await moveThreeTimes(hosts)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
    }

    private func moveThreeTimes(_ hosts: BridgedHosts) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let service = "\(hosts.subnet).100"
        try await hosts.setAddress(service, on: 1, present: true)
        // redis's own keepalive (300 s by default) never fires during the test.
        let config = """
            port \(RedisLiveClientsTests.port)
            bind \(service)
            protected-mode no
            dir \(scratch.path)
            daemonize no
            save ""
            appendonly no
            logfile \(scratch.path)/redis.log
            """
        try config.write(toFile: scratch.path + "/redis.conf", atomically: true, encoding: .utf8)
        let original = try ChildProcess(executable: RedisLiveClientsTests.nsenter,
                                        arguments: ["--net=\(hosts.path(1))", "--", RedisRestoreTests.server, scratch.path + "/redis.conf"],
                                        stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let pid = original.pid
        var alive = true
        defer { if alive { kill(pid, SIGKILL) } }

        // Clients mid-session, connected to the original listener.
        let first = try await Blocking.run("redis-clients") { () throws -> RedisLiveClientsTests.Clients in
            .init(try (0..<3).map { _ in try RedisLiveClientsTests.connect(from: hosts, to: service) })
        }
        let big = (0..<200_000).map { String(UnicodeScalar(UInt8(65 + $0 % 26))) }.joined()
        let setup = try await Blocking.run("redis-session") { () throws -> [[RedisClient.Reply]] in
            [try first[0].pipeline([["SELECT", "5"], ["SET", "k1", "v1"], ["SET", "big", big]]),
             try first[1].pipeline([["CLIENT", "SETNAME", "second"], ["SET", "k2", "v2"]]),
             try first[2].pipeline([["MULTI"], ["SET", "k3", "v3"], ["INCR", "counter"]])]
        }
        #expect(setup[0] == [.simple("OK"), .simple("OK"), .simple("OK")] && setup[1] == [.simple("OK"), .simple("OK")], "\(setup)")
        #expect(setup[2] == [.simple("OK"), .simple("QUEUED"), .simple("QUEUED")], "\(setup[2])")

        // 1: the original moved.
        var digest = try await Self.digest(hosts, service)
        try await Self.move(pid, original: original, hosts: hosts, images: scratch.path + "/1", whileFrozen: nil)
        #expect(try await Self.digest(hosts, service) == digest, "the keyspace after the first restore")

        // Clients that the restored listener accepts: the first keeps its session, the two
        // others go away while the next checkpoint has the server frozen.
        let later = try await Blocking.run("redis-clients") { () throws -> RedisLiveClientsTests.Clients in
            .init(try (0..<3).map { _ in try RedisLiveClientsTests.connect(from: hosts, to: service) })
        }
        let ping = try await Blocking.run("redis-later") { () throws -> [[RedisClient.Reply]] in
            [try later[0].pipeline([["SELECT", "3"], ["SET", "k4", "v4"]]), try later[1].pipeline([["PING"]]), try later[2].pipeline([["PING"]])]
        }
        #expect(ping == [[.simple("OK"), .simple("OK")], [.simple("PONG")], [.simple("PONG")]], "\(ping)")
        let clients = RedisLiveClientsTests.Clients(first.list + [later[0]])
        let gone = RedisLiveClientsTests.Clients([later[1], later[2]])
        let gonePorts = gone.map { RedisLiveClientsTests.localPort($0.socketDescriptor) }

        // 2: the restored process moved; one client hangs up and one resets during the freeze.
        digest = try await Self.digest(hosts, service)
        let second = try await Self.move(pid, original: nil, hosts: hosts, images: scratch.path + "/2", whileFrozen: {
            gone[0].hangUp()
            try? gone[1].abort()
            usleep(100_000)  // the FIN and the reset reach the frozen server's kernel
        })
        let sockets = second.restore?.sockets ?? []
        let closeWait = try #require(second.restore?.connections?.first { $0.connection.remote.port == gonePorts[0] },
                                     "the connection whose client hung up is captured: \(second.restore?.connections?.map(\.connection.name) ?? [])")
        #expect(closeWait.connection.peerClosed == true)
        let reset = try #require(sockets.first { $0.endedPeer.flatMap(\.port) == gonePorts[1] },
                                 "the reset connection is a socket whose connection ended: \(sockets)")
        #expect(reset.tcpState == 7 && reset.peer == nil && second.restore?.connections?.contains { $0.inode == reset.inode } == false)
        #expect(try await Self.digest(hosts, service) == digest, "the keyspace after the second restore")
        // redis reads the end of file and the error, and drops both: the four others remain.
        let list = try await RedisLiveClientsTests.awaitClientCount(4, from: hosts, to: service)
        #expect(!list.contains(":\(gonePorts[0]) ") && !list.contains(":\(gonePorts[1]) "), "\(list)")

        // 3: moved again; every image held every connection (checked in `move`).
        digest = try await Self.digest(hosts, service)
        try await Self.move(pid, original: nil, hosts: hosts, images: scratch.path + "/3", whileFrozen: nil)
        #expect(try await Self.digest(hosts, service) == digest, "the keyspace after the third restore")

        // Each survivor's next commands on its same connection, byte-exact.
        let after = try await Blocking.run("redis-after") { () throws -> [[RedisClient.Reply]] in
            [try clients[0].pipeline([["GET", "k1"], ["GET", "big"], ["DBSIZE"]]),
             try clients[1].pipeline([["CLIENT", "GETNAME"], ["GET", "k2"]]),
             try clients[2].pipeline([["EXEC"], ["GET", "k3"]]),
             try clients[3].pipeline([["GET", "k4"], ["DBSIZE"]])]
        }
        #expect(after[0] == [.bulk(Array("v1".utf8)), .bulk(Array(big.utf8)), .integer(2)], "\(after[0].map { "\($0)".prefix(80) })")
        #expect(after[1] == [.bulk(Array("second".utf8)), .bulk(Array("v2".utf8))], "\(after[1])")
        #expect(after[2] == [.array([.simple("OK"), .integer(1)]), .bulk(Array("v3".utf8))], "\(after[2])")
        #expect(after[3] == [.bulk(Array("v4".utf8)), .integer(1)], "\(after[3])")
        #expect(try await hosts.tables(1).isEmpty, "no lock left")
        alive = false
        kill(pid, SIGKILL)
    }

    /// Checkpoints redis with its connections (what `dump --kill` does, with `whileFrozen` run
    /// during the freeze), checks that the image holds the repair state of every connected TCP
    /// socket and is restorable, kills redis and restores it in host a (`mitosis restore`).
    @discardableResult
    static func move(_ pid: Int32, original: ChildProcess?, hosts: BridgedHosts, images: String,
                     whileFrozen: (@Sendable () -> Void)?) async throws -> CheckpointManifest {
        var options = CheckpointOptions()
        options.moveConnections = true
        options.whileFrozen = whileFrozen
        let session = try await CheckpointSession(pid: pid, options: options)
        do {
            _ = try await session.checkpoint(to: DirectorySink(directory: images), parent: nil)
        } catch {
            await session.stop()
            throw error
        }
        try await session.killTarget()
        if let original { _ = try await Blocking.run("redis-reap") { original.wait() } }
        try await RedisLiveClientsTests.awaitGone(pid, hosts: hosts, host: 1)
        // A restored redis is an orphan: its pid is free once init has reaped it.
        for _ in 0..<200 where FileManager.default.fileExists(atPath: "/proc/\(pid)") { try await Task.sleep(for: .milliseconds(50)) }
        let manifest = try CheckpointImage.open(images).manifest
        guard let record = manifest.restore else { throw RestoreFailure(description: "image \(images) is not restorable (see the checkpoint's warning)") }
        let captured = Set((record.connections ?? []).map(\.inode))
        for state in record.sockets ?? [] where state.isInet && state.type == Linux.SOCK_STREAM && !state.listening && state.tcpState != 7 {
            #expect(captured.contains(state.inode), "\(images): socket \(state.inode) (\(state.local?.description ?? "") → \(state.peer?.description ?? ""), state \(state.tcpState ?? 0)) has no repair state")
        }
        #expect(Restorer.refusals(of: manifest).isEmpty, "\(images): \(Restorer.refusals(of: manifest))")
        let restore = try await ToolRun(ToolRun.mitosis, ["restore", images, "--netns", hosts.hosts[1]])
        #expect(restore.status == 0, "\(images): \(restore.standardError)")
        if restore.status != 0 { throw RestoreFailure(description: "restore of \(images) failed: \(restore.standardError)") }
        return manifest
    }

    /// The keyspace's digest, asked on a new connection.
    static func digest(_ hosts: BridgedHosts, _ service: String) async throws -> String {
        try await Blocking.run("redis-digest") { () throws -> String in
            let client = try RedisLiveClientsTests.connect(from: hosts, to: service)
            var parts: [String] = []
            for db in ["0", "3", "5"] {
                _ = try client.call("SELECT", db)
                let (keys, hash) = try client.keyspaceDigest(hash: { Checksum.xxh64($0) })
                parts.append("\(db):\(keys):\(hash)")
            }
            return parts.joined(separator: " ")
        }
    }
}
