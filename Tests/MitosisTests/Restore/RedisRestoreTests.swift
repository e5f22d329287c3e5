import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore
@testable import MitosisTrace

/// Debian's redis-server, started by the test on a loopback port with its own configuration,
/// loaded with 100,000 keys, checkpointed by `mitosis dump --kill`, restored, and then asked to
/// prove it: same keyspace, new writes, a growing and valid AOF, a clean shutdown.
@Suite(.serialized) struct RedisRestoreTests {
    static let server = "/usr/bin/redis-server"
    static let checkAOF = "/usr/bin/redis-check-aof"

    /// Waits until redis holds no socket but its listener: clients that closed are closed on its side too.
    static func awaitNoClients(_ pid: Int32) async throws {
        for _ in 0..<2000 {  // up to 20 s: a loaded machine delays redis's own close
            let sockets = try Kernel.listDirectory("/proc/\(pid)/fd").filter { (try? Kernel.readLink("/proc/\(pid)/fd/\($0)"))?.hasPrefix("socket:") == true }
            if sockets.count == 1 { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        let fds = try Kernel.listDirectory("/proc/\(pid)/fd").map { "\($0) -> \((try? Kernel.readLink("/proc/\(pid)/fd/\($0)")) ?? "?")" }
        throw RestoreFailure(description: "redis kept a client connection: \(fds)")
    }

    static func digest(port: UInt16) async throws -> (keys: Int, digest: UInt64) {
        try await Blocking.run("redis-digest") { try RedisClient(port: port).keyspaceDigest(hash: { Checksum.xxh64($0) }) }
    }

    static func incrementalAOF(_ directory: String) throws -> String {
        let names = try Kernel.listDirectory(directory + "/appendonlydir").filter { $0.hasSuffix(".incr.aof") }
        guard names.count == 1 else { throw RestoreFailure(description: "AOF files: \(names)") }
        return directory + "/appendonlydir/" + names[0]
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: server) && FileManager.default.isExecutableFile(atPath: checkAOF),
                   "needs Debian's redis-server and redis-tools (scripts/setup installs them)"))
    func redisComesBackWithItsKeyspaceAndShutsDownCleanly() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let port = try Kernel.freeLoopbackPort()
        let config = """
            port \(port)
            bind 127.0.0.1
            appendonly yes
            appendfsync everysec
            dir \(scratch.path)
            daemonize no
            save ""
            logfile \(scratch.path)/redis.log
            """
        try config.write(toFile: scratch.path + "/redis.conf", atomically: true, encoding: .utf8)
        let original = try ChildProcess(executable: Self.server, arguments: [scratch.path + "/redis.conf"], stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let pid = original.pid
        var restored = false
        defer { if restored { endRestored(pid) } else { original.kill() } }

        // 100,000 keys: strings, and every hundredth a hash and a list, pipelined 1,000 at a time.
        try await Blocking.run("redis-load") {
            var client: RedisClient?
            for _ in 0..<500 where client == nil {
                client = try? RedisClient(port: port)
                if client == nil { usleep(10_000) }
            }
            guard let loader = client else { throw RestoreFailure(description: "redis did not listen on \(port)") }
            for start in stride(from: 0, to: 100_000, by: 1000) {
                let commands = (start..<start + 1000).map { i -> [String] in
                    switch i % 100 {
                    case 1: ["HSET", "hash:\(i)", "field", "\(i)", "other", String(repeating: "h", count: i % 50)]
                    case 2: ["RPUSH", "list:\(i)", "a\(i)", "b\(i)", "c\(i)"]
                    default: ["SET", "key:\(i)", "value:\(i):" + String(repeating: "x", count: i % 64)]
                    }
                }
                for reply in try loader.pipeline(commands) {
                    if case .error(let text) = reply { throw RestoreFailure(description: text) }
                }
            }
        }
        let before = try await Self.digest(port: port)
        #expect(before.keys == 100_000)
        try await Self.awaitNoClients(pid)
        let tids = try Kernel.listDirectory("/proc/\(pid)/task").compactMap { Int32($0) }.sorted()
        let aof = try Self.incrementalAOF(scratch.path)

        // Checkpointed and killed by the CLI; the original reaped so that its pid is free.
        let images = scratch.path + "/images"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(pid), "--images", images, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        let status = try await Blocking.run("redis-reap") { original.wait() }
        #expect(ChildProcess.exitCode(of: status) == 128 + SIGKILL)
        let aofAtKill = try Kernel.status(aof).size

        // `mitosis restore --check`, then the library's restore (the restored redis is this test's
        // child, so that its exit status can be read), byte-exact before it runs.
        let image = images
        let check = try await ToolRun(ToolRun.mitosis, ["restore", "--check", image])
        #expect(check.status == 0 && check.standardOutput.hasPrefix("\(image): restorable here (process \(pid), \(tids.count) threads, 8 descriptors)"),
                "\(check.standardOutput)\(check.standardError)")
        let restorer = try Restorer(image: CheckpointImage.open(image))
        let chain = restorer.chain, manifest = restorer.manifest
        let result = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ") }
            let maps = try RestoreVerification.mappingDifferences(pid: pid, manifest: manifest)
            guard maps.isEmpty else { throw RestoreFailure(description: maps.joined(separator: "; ")) }
        })
        restored = true
        #expect(result.pid == pid && result.threads == tids.count && result.descriptors == 8)
        #expect(try Kernel.listDirectory("/proc/\(pid)/task").compactMap { Int32($0) }.sorted() == tids)
        // redis's cron opens /proc/PID/stat for a moment ten times a second (its RSS): a
        // listing that caught it open is taken again.
        var fds = try ProcessReader.descriptors(TargetProcess(pid: pid))
        for _ in 0..<20 where fds.contains(where: { $0.path?.hasPrefix("/proc/") == true }) {
            try await Task.sleep(for: .milliseconds(10))
            fds = try ProcessReader.descriptors(TargetProcess(pid: pid))
        }
        #expect(fds.map(\.fd) == [0, 1, 2, 3, 4, 5, 6, 7], "\(fds.map { "\($0.fd) \($0.path ?? "")" })")
        #expect(fds.map(\.kind) == [.characterDevice, .characterDevice, .characterDevice, .pipe, .pipe, .epoll, .socket, .file])
        #expect(fds.map(\.flags) == manifest.descriptors?.map(\.flags))
        #expect(fds[7].path == aof && fds[7].position == aofAtKill)

        // The same keyspace; new writes work and reach the AOF, which redis-check-aof accepts.
        let after = try await Self.digest(port: port)
        #expect(after.keys == before.keys && after.digest == before.digest)
        let replies = try await Blocking.run("redis-write") {
            let client = try RedisClient(port: port)
            return try client.pipeline([["SET", "after-restore", "yes"], ["GET", "after-restore"], ["GET", "key:12345"], ["DBSIZE"]])
        }
        #expect(replies == [.simple("OK"), .bulk(Array("yes".utf8)), .bulk(Array(("value:12345:" + String(repeating: "x", count: 12345 % 64)).utf8)),
                            .integer(100_001)])
        var grown = try Kernel.status(aof).size
        for _ in 0..<200 where grown <= aofAtKill {
            try await Task.sleep(for: .milliseconds(10))
            grown = try Kernel.status(aof).size
        }
        #expect(grown > aofAtKill, "the AOF grew from \(aofAtKill) to \(grown)")
        let verdict = try await ToolRun(Self.checkAOF, [scratch.path + "/appendonlydir/appendonly.aof.manifest"])
        #expect(verdict.status == 0 && verdict.standardOutput.contains("All AOF files and manifest are valid"), "\(verdict.standardOutput)")

        // SIGTERM: redis's handler, its shutdown (fsync by the bio thread, joins) and exit 0.
        kill(pid, SIGTERM)
        let exit = try await Blocking.run("redis-exit") { () -> Int32 in
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) == -1 && errno == EINTR {}
            return raw
        }
        restored = false
        #expect(ChildProcess.exitCode(of: exit) == 0, "exit status \(exit)")
        let log = try String(contentsOfFile: scratch.path + "/redis.log", encoding: .utf8)
        #expect(log.contains("Redis is now ready to exit, bye bye..."))
    }

    /// A redis changed between checkpoints (new keys, rewritten and deleted ones: jemalloc reuses,
    /// frees and purges pages) and checkpointed incrementally five times, then restored from the
    /// last image: a page stored again in a middle image and inherited from it afterwards must come
    /// from that image, not from an older run around it (a restore took it from the full image,
    /// and the restored redis crashed at its first connection).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: server), "needs Debian's redis-server (scripts/setup installs it)"))
    func redisRestoredFromAnIncrementalChainAnswers() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let port = try Kernel.freeLoopbackPort()
        let config = """
            port \(port)
            bind 127.0.0.1
            dir \(scratch.path)
            daemonize no
            save ""
            appendonly no
            logfile \(scratch.path)/redis.log
            """
        try config.write(toFile: scratch.path + "/redis.conf", atomically: true, encoding: .utf8)
        let original = try ChildProcess(executable: Self.server, arguments: [scratch.path + "/redis.conf"], stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let pid = original.pid
        var restored = false
        defer { if restored { endRestored(pid) } else { original.kill() } }

        /// Round `round` of writes, on a connection closed before the next checkpoint.
        func load(_ round: Int) async throws {
            try await Blocking.run("redis-load") {
                var client: RedisClient?
                for _ in 0..<500 where client == nil {
                    client = try? RedisClient(port: port)
                    if client == nil { usleep(10_000) }
                }
                guard let loader = client else { throw RestoreFailure(description: "redis did not listen on \(port)") }
                for start in stride(from: 0, to: 20_000, by: 1000) {
                    let commands = (start..<start + 1000).map { i -> [String] in
                        switch (i + round) % 7 {
                        case 0: ["DEL", "key:\((i * 7 + round) % 20_000)"]
                        case 1: ["INCR", "counter:\(i % 500)"]
                        case 2: ["RPUSH", "list:\(i % 300)", String(repeating: "l", count: (i + round) % 90)]
                        default: ["SET", "key:\((i * 13 + round * 101) % 20_000)", "r\(round):" + String(repeating: "x", count: (i * round) % 200)]
                        }
                    }
                    for reply in try loader.pipeline(commands) {
                        if case .error(let text) = reply { throw RestoreFailure(description: text) }
                    }
                }
            }
            try await Self.awaitNoClients(pid)
        }

        let images = scratch.path + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: false)
        try await load(0)
        let session = try await CheckpointSession(pid: pid)
        do {
            _ = try await session.checkpoint(to: DirectorySink(directory: images + "/0"))
            for round in 1...5 {
                try await load(round)
                _ = try await session.checkpoint(to: DirectorySink(directory: images + "/\(round)"), parent: .previous(path: "../\(round - 1)"))
            }
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        let before = try await Self.digest(port: port)
        try await Self.awaitNoClients(pid)
        original.kill()
        _ = try await Blocking.run("redis-reap") { original.wait() }

        let restorer = try Restorer(image: CheckpointImage.open(images + "/5"))
        let chain = restorer.chain
        #expect(chain.images.count == 6)
        let inheritedFromMiddle = try (1...4).contains { round in
            let middle = try CheckpointImage.open(images + "/\(round)")
            return CheckpointSession.pages(of: chain.newest.manifest, in: .inherited).intersection(
                CheckpointSession.pages(of: middle.manifest, in: .stored)).pageCount() > 0
        }
        #expect(inheritedFromMiddle, "the last image inherits pages stored by a middle one")
        _ = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ from the chain's") }
        })
        restored = true
        // New connections, the whole keyspace read, a new write.
        let after = try await Self.digest(port: port)
        #expect(after.keys == before.keys && after.digest == before.digest)
        let replies = try await Blocking.run("redis-write") {
            try RedisClient(port: port).pipeline([["KEYS", "*"], ["SET", "x", "1"], ["GET", "x"], ["DBSIZE"]])
        }
        guard case .array(let keys?) = replies.first else { throw RestoreFailure(description: "KEYS answered \(String(describing: replies.first))") }
        #expect(keys.count == before.keys)
        #expect(Array(replies.dropFirst()) == [.simple("OK"), .bulk(Array("1".utf8)), .integer(before.keys + 1)])
    }
}
