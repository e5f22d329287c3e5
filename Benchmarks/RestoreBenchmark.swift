import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Restore time of the self-checking `acceptance` scenario (threads, POSIX timers, an itimer,
/// patterned memory), small and large, and of Debian's redis-server holding 100,000 keys.
/// Each row beside CRIU's restore of the same state when a CRIU 4.x binary is available (a
/// second copy started and loaded alike, dumped by `criu dump`), and the scenario rows beside the
/// time to fill the same amount of fresh memory with `UFFDIO_COPY` in this process (the
/// practical floor of any restore: page allocation and copying). The columns of a row are
/// measured interleaved, run by run, and reported as medians; every restored process must pass
/// its check (CRIU's check result is printed).
///
/// Needs the scenario program: `swift build -c release --product mitosis-scenario` first.
struct RestoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore",
                                                    abstract: "Restore time of a scenario and of redis beside CRIU and the UFFDIO_COPY fill floor.")

    @Option(help: "Sizes of the scenario's patterned memory, in MiB.") var mib: [Int] = [16, 1024]
    @Option(help: "Restores (and floor fills) per row; medians are reported.") var runs = 5
    @Option(help: "Keys loaded into redis (0: no redis row).") var redisKeys = 100_000
    @Option(help: "Where images are written (removed afterwards).") var scratch = NSTemporaryDirectory()

    func run() async throws {
        let directory = scratch + "/mitosis-bench-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (criu, criuNote) = Self.findCriu()
        print("CRIU: " + criuNote)
        for size in mib { try await scenarioRow(size: size, criu: criu, directory: directory) }
        if redisKeys > 0 { try await redisRow(criu: criu, directory: directory) }
    }

    // MARK: The scenario rows

    func scenarioRow(size: Int, criu: String?, directory: String) async throws {
        let log = directory + "/scenario-\(size).log"
        let target = try ScenarioTarget(["acceptance", log, "\(size)", "2", "600"])
        try target.send("detach")
        let pid = target.pid
        let session = try await CheckpointSession(pid: pid)
        let image = directory + "/image-\(size)"
        let checkpoint = try await session.checkpoint(to: DirectorySink(directory: image))
        try await session.killTarget()
        target.stop()
        try await Self.awaitGone(pid)
        // Each restored copy appends to the log: put it back as it was before each restore.
        let logAtCheckpoint = try Data(contentsOf: URL(fileURLWithPath: log))
        let restorer = try Restorer(image: CheckpointImage.open(image))
        var criuSide: CriuSide?
        var criuProblem: String?
        if let criu {
            do { criuSide = try await CriuSide.scenario(criu, size: size, directory: directory) } catch { criuProblem = "\(error)" }
        }
        let bytes = Int(checkpoint.manifest.stats.bytesWritten)
        var results: [RestoreResult] = []
        var floors: [Double] = [], cachedFloors: [Double] = [], criuTimes: [Double] = []
        var criuCheck = ""
        for _ in 0..<runs {
            let result = try await restorer.restore()
            // Its timers fire every 20, 30 and 50 ms: the check asks that each fired.
            try await Task.sleep(for: .milliseconds(150))
            kill(pid, SIGUSR1)
            let checked = try await Self.awaitCheck(in: log)
            kill(pid, SIGKILL)
            Kernel.reap(pid)
            guard checked.contains(" PASS ") else { throw ValidationError("restored process failed its check: \(checked)") }
            try logAtCheckpoint.write(to: URL(fileURLWithPath: log))
            results.append(result)
            floors.append(try Self.fillFloor(bytes: bytes))
            cachedFloors.append(try Self.fillFloor(bytes: bytes, chunk: 1 << 20))
            if let side = criuSide, criuProblem == nil {
                do {
                    criuTimes.append(try await side.restore { pid in
                        try await Task.sleep(for: .milliseconds(150))
                        kill(pid, SIGUSR1)
                        let line = (try? await Self.awaitCheck(in: side.log)) ?? "no check answered"
                        return line.contains(" PASS ") ? "restored process passed its check" : "restored process: \(line)"
                    })
                    criuCheck = side.lastCheck
                } catch { criuProblem = "\(error)" }
            }
        }
        let restore = Median(results.map(\.restoreMilliseconds))
        let floor = Median(floors), cachedFloor = Median(cachedFloors)
        let phases = ["husk", "empty", "memory", "state", "resume"].map { name in String(format: "%@ %.1f", name, Median(results.map { $0.phases[name] ?? 0 }).value) }
        print("""
            \(size) MiB scenario (\(results[0].threads) threads, \(results[0].descriptors) descriptors, \(String(format: "%.1f", Double(bytes) / 1048576)) MiB stored), medians of \(runs) interleaved runs, ratios run by run (median, range):
               restore:                 \(restore) (phases: \(phases.joined(separator: ", ")) ms)
               UFFDIO_COPY fill floor:  \(floor); restore / floor = \(Self.ratios(results.map(\.restoreMilliseconds), floors))
               same, 1 MiB source reused: \(cachedFloor); restore / it = \(Self.ratios(results.map(\.restoreMilliseconds), cachedFloors)), memory phase / it = \(Self.ratios(results.map { $0.phases["memory"] ?? 0 }, cachedFloors))
            """)
        if criu != nil { printCriu(criuTimes, check: criuCheck, problem: criuProblem, mitosis: results.map(\.restoreMilliseconds)) }
    }

    // MARK: The redis row

    /// Debian's redis-server as the redis restore test runs it (its own configuration, a loopback
    /// port, `appendonly yes`, the same mix of keys), with no client connected, checkpointed and
    /// killed; restored by the library (`restore_ms`) and by the CLI (`mitosis restore IMAGE`,
    /// wall time of the process, as CRIU's is timed), each restored server asked `DBSIZE`.
    func redisRow(criu: String?, directory: String) async throws {
        guard FileManager.default.isExecutableFile(atPath: RedisServer.server), FileManager.default.isExecutableFile(atPath: RedisServer.cli) else {
            print("redis: row skipped: needs Debian's redis-server and redis-tools (scripts/setup installs them)")
            return
        }
        let ours = try await RedisServer.start(in: directory + "/redis-mitosis", keys: redisKeys)
        let pid = ours.child.pid
        let session = try await CheckpointSession(pid: pid)
        let image = directory + "/redis-image"
        let checkpoint: CheckpointResult
        do {
            checkpoint = try await session.checkpoint(to: DirectorySink(directory: image))
            try await session.killTarget()
        } catch {
            ours.child.kill()
            throw error
        }
        ours.child.wait()
        // Whatever fails below, no restored server outlives the benchmark.
        defer { kill(pid, SIGKILL) }
        let files = try ours.snapshotFiles()
        let restorer = try Restorer(image: CheckpointImage.open(image))
        var criuSide: CriuSide?
        var criuProblem: String?
        var theirs: RedisServer?
        if let criu {
            do {
                let server = try await RedisServer.start(in: directory + "/redis-criu", keys: redisKeys)
                theirs = server
                criuSide = try await CriuSide.dump(criu, pid: server.child.pid, images: directory + "/redis-criu-images", log: nil) { server.child.wait() }
            } catch { criuProblem = "\(error)" }
        }
        defer { if let theirs { kill(theirs.child.pid, SIGKILL) } }
        let criuFiles = try theirs?.snapshotFiles()
        let mitosis = siblingExecutable("mitosis")
        var library: [Double] = [], cli: [Double] = [], criuTimes: [Double] = []
        var results: [RestoreResult] = []
        var criuCheck = ""
        for _ in 0..<runs {
            try ours.putBack(files)
            let restored = try await restorer.restore()
            try await ours.expectKeys(redisKeys)
            kill(pid, SIGKILL)
            Kernel.reap(pid)
            library.append(restored.restoreMilliseconds)
            results.append(restored)

            try ours.putBack(files)
            let run = try TimedRun.run(mitosis, ["restore", image])
            guard FileManager.default.fileExists(atPath: "/proc/\(pid)") else { throw ValidationError("mitosis restore \(image) failed") }
            try await ours.expectKeys(redisKeys)
            kill(pid, SIGKILL)
            try await Self.awaitGone(pid)
            cli.append(run.wall.inMilliseconds)

            if let side = criuSide, let theirs, let criuFiles, criuProblem == nil {
                do {
                    try theirs.putBack(criuFiles)
                    criuTimes.append(try await side.restore { _ in
                        let keys = try? theirs.keys()
                        return keys == redisKeys ? "restored server holds its \(redisKeys) keys" : "restored server: DBSIZE \(keys.map(String.init) ?? "unanswered")"
                    })
                    criuCheck = side.lastCheck
                } catch { criuProblem = "\(error)" }
            }
        }
        let restore = Median(library), run = Median(cli)
        let phases = ["husk", "empty", "memory", "state", "resume"].map { name in String(format: "%@ %.1f", name, Median(results.map { $0.phases[name] ?? 0 }).value) }
        print("""
            redis-server, \(redisKeys) keys (\(results[0].threads) threads, \(results[0].descriptors) descriptors, \(String(format: "%.1f", Double(checkpoint.manifest.stats.bytesWritten) / 1048576)) MiB stored), medians of \(runs) interleaved runs, ratios run by run (median, range):
               restore (library):       \(restore) (phases: \(phases.joined(separator: ", ")) ms)
               mitosis restore IMAGE:   \(run) (wall time of the mitosis process)
            """)
        if criu != nil { printCriu(criuTimes, check: criuCheck, problem: criuProblem, mitosis: library, cli: cli) }
    }

    func printCriu(_ times: [Double], check: String, problem: String?, mitosis: [Double], cli: [Double]? = nil) {
        if let problem {
            print("   CRIU restore -d:         failed: \(problem)")
            return
        }
        var line = "   CRIU restore -d:         \(Median(times)) (wall time of the criu process; \(check)); mitosis / criu = \(Self.ratios(mitosis, times))"
        if let cli { line += " (library), \(Self.ratios(cli, times)) (CLI)" }
        print(line)
    }

    /// The median of the ratios of run-by-run pairs (measured seconds apart, so under about the
    /// same load), with their range: steadier on a loaded machine than a ratio of medians.
    static func ratios(_ values: [Double], _ references: [Double]) -> String {
        let ratios = zip(values, references).map { $0 / $1 }.sorted()
        guard !ratios.isEmpty else { return "-" }
        return String(format: "%.2f (%.2f–%.2f)", ratios[ratios.count / 2], ratios[0], ratios[ratios.count - 1])
    }

    // MARK: CRIU

    /// The `criu` of version 4.0 or newer ($CRIU, else PATH, else /usr/local/sbin) and a line
    /// about it; nil with the reason the CRIU column is skipped.
    static func findCriu() -> (String?, String) {
        let environment = ProcessInfo.processInfo.environment
        let candidates = [environment["CRIU"]].compactMap { $0 }
            + (environment["PATH"] ?? "").split(separator: ":").map { $0 + "/criu" } + ["/usr/local/sbin/criu", "/usr/sbin/criu"]
        guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return (nil, "column skipped: no criu binary in $CRIU, on PATH, in /usr/local/sbin or /usr/sbin")
        }
        guard let output = try? ToolOutput.capture(path, ["--version"]) else { return (nil, "column skipped: \(path) does not run") }
        let text = String(decoding: output, as: UTF8.self)
        // "Version: 4.2" (a "GitID:" line may follow).
        let version = text.split(separator: "\n").first { $0.hasPrefix("Version:") }.map { $0.dropFirst(8).trimmingCharacters(in: .whitespaces) } ?? "?"
        guard let major = Int(version.split(separator: ".").first ?? ""), major >= 4 else {
            return (nil, "column skipped: \(path) is version \(version), older than 4.0 (Debian's 3.17 does not start on this kernel)")
        }
        return (path, "\(path) version \(version): dumps a second copy of the same process state, restores it with `criu restore -d`")
    }

    /// CRIU's side of a row: a process dumped by `criu dump` (which kills it), then restored
    /// again and again by `criu restore -d`, each restored copy checked and killed.
    final class CriuSide {
        let criu: String
        let pid: Int32
        let images: String
        /// The scenario's log (CRIU checks the size of every file the process holds open: it is
        /// put back as it was at the dump before each restore).
        let log: String
        let logAtDump: Data?
        private(set) var lastCheck = ""

        init(criu: String, pid: Int32, images: String, log: String?) throws {
            self.criu = criu
            self.pid = pid
            self.images = images
            self.log = log ?? ""
            logAtDump = try log.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        }

        /// A second copy of the `acceptance` scenario, started alike and dumped.
        static func scenario(_ criu: String, size: Int, directory: String) async throws -> CriuSide {
            let log = directory + "/criu-scenario-\(size).log"
            let target = try ScenarioTarget(["acceptance", log, "\(size)", "2", "600"])
            try target.send("detach")
            return try await dump(criu, pid: target.pid, images: directory + "/criu-\(size)", log: log) { target.stop() }
        }

        /// Dumps `pid` with `criu dump` (which kills it); `reap` collects the dead process.
        static func dump(_ criu: String, pid: Int32, images: String, log: String?, reap: () -> Void) async throws -> CriuSide {
            try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
            _ = try TimedRun.run(criu, ["dump", "-t", "\(pid)", "--shell-job", "-D", images, "-o", "dump.log"])
            reap()
            try await RestoreBenchmark.awaitGone(pid)
            guard !FileManager.default.fileExists(atPath: "/proc/\(pid)") else { throw ValidationError("criu dump left process \(pid) running (see \(images)/dump.log)") }
            return try CriuSide(criu: criu, pid: pid, images: images, log: log)
        }

        /// Restores once; returns the wall time of the restoring criu process in milliseconds.
        /// `check` asks the restored process (its answer is kept in `lastCheck`); then it is killed.
        func restore(check: (Int32) async throws -> String) async throws -> Double {
            try logAtDump?.write(to: URL(fileURLWithPath: log))
            let run = try TimedRun.run(criu, ["restore", "-d", "--shell-job", "-D", images, "-o", "restore.log"])
            guard FileManager.default.fileExists(atPath: "/proc/\(pid)") else { throw ValidationError("criu restore failed (see \(images)/restore.log)") }
            lastCheck = try await check(pid)
            kill(pid, SIGKILL)
            try await RestoreBenchmark.awaitGone(pid)
            return run.wall.inMilliseconds
        }
    }

    // MARK: Helpers

    /// Milliseconds to fill `bytes` of fresh anonymous memory of this process with UFFDIO_COPY
    /// from an already-present source: what page allocation and copying alone cost. With
    /// `chunk`, the source is one buffer of that size copied again and again, one UFFDIO_COPY per
    /// chunk, as the restore writes from its reused read buffers: allocation and copying from a
    /// source in the CPU's cache, without the reading of a source as large as the memory.
    static func fillFloor(bytes: Int, chunk: Int? = nil) throws -> Double {
        let sourceBytes = min(chunk ?? bytes, bytes)
        let source = try Kernel.mapAnonymous(length: sourceBytes)
        defer { Kernel.unmap(source, length: sourceBytes) }
        for index in stride(from: 0, to: sourceBytes, by: 8) { source.storeBytes(of: UInt64(index) &* 0x9e37_79b9, toByteOffset: index, as: UInt64.self) }
        let target = try Kernel.mapAnonymous(length: bytes)
        defer { Kernel.unmap(target, length: bytes) }
        let uffd = try Kernel.userfaultfd(flags: O_CLOEXEC)
        defer { try? uffd.close() }
        let copier = Userfaultfd(descriptor: uffd)
        try copier.enable([])
        let base = UInt64(UInt(bitPattern: target))
        try copier.registerMissing(start: base, end: base + UInt64(bytes))
        let clock = ContinuousClock()
        let start = clock.now
        for offset in stride(from: 0, to: bytes, by: sourceBytes) {
            try copier.copy(to: base + UInt64(offset), from: UnsafeRawBufferPointer(start: source, count: min(sourceBytes, bytes - offset)))
        }
        let (seconds, attoseconds) = (clock.now - start).components
        return Double(seconds) * 1000 + Double(attoseconds) / 1e15
    }

    static func awaitGone(_ pid: Int32) async throws {
        for _ in 0..<500 where FileManager.default.fileExists(atPath: "/proc/\(pid)") { try await Task.sleep(for: .milliseconds(10)) }
    }

    /// The `CHECK` line the restored process wrote.
    static func awaitCheck(in log: String) async throws -> String {
        for _ in 0..<1000 {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").last(where: { $0.hasPrefix("CHECK") }) { return String(line) }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ValidationError("the restored process never answered")
    }
}

/// The median of some milliseconds, printed with their range.
struct Median: CustomStringConvertible {
    let sorted: [Double]
    init(_ values: [Double]) { sorted = values.sorted() }
    var value: Double { sorted.isEmpty ? .nan : sorted[sorted.count / 2] }
    var description: String {
        String(format: "%.1f ms (min %.1f, max %.1f)", value, sorted.first ?? .nan, sorted.last ?? .nan)
    }
}

/// Debian's redis-server started by the benchmark in a directory of its own, with its own
/// configuration, on a free loopback port, `appendonly yes`, loaded by `redis-cli --pipe` with
/// the redis restore test's mix of keys (strings; every hundredth a hash, and a list).
struct RedisServer {
    static let server = "/usr/bin/redis-server"
    static let cli = "/usr/bin/redis-cli"
    let child: ChildProcess
    let port: UInt16
    let directory: String

    static func start(in directory: String, keys: Int) async throws -> RedisServer {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let port = try Kernel.freeLoopbackPort()
        try """
            port \(port)
            bind 127.0.0.1
            appendonly yes
            appendfsync everysec
            dir \(directory)
            daemonize no
            save ""
            logfile ""
            """.write(toFile: directory + "/redis.conf", atomically: true, encoding: .utf8)
        let child = try ChildProcess(executable: server, arguments: [directory + "/redis.conf"], stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let redis = RedisServer(child: child, port: port, directory: directory)
        do {
            var answered = false
            for _ in 0..<500 where !answered {
                answered = (try? redis.keys()) == 0
                if !answered { try await Task.sleep(for: .milliseconds(10)) }
            }
            guard answered else { throw ValidationError("redis did not answer on port \(port)") }
            try redis.load(keys: keys)
            guard try redis.keys() == keys else { throw ValidationError("redis does not hold the \(keys) keys loaded") }
            try await redis.awaitNoClients()
        } catch {
            child.kill()
            child.wait()
            throw error
        }
        return redis
    }

    func load(keys: Int) throws {
        var protocolText = ""
        func command(_ words: [String]) {
            protocolText += "*\(words.count)\r\n"
            for word in words { protocolText += "$\(word.utf8.count)\r\n\(word)\r\n" }
        }
        for i in 0..<keys {
            switch i % 100 {
            case 1: command(["HSET", "hash:\(i)", "field", "\(i)", "other", String(repeating: "h", count: i % 50)])
            case 2: command(["RPUSH", "list:\(i)", "a\(i)", "b\(i)", "c\(i)"])
            default: command(["SET", "key:\(i)", "value:\(i):" + String(repeating: "x", count: i % 64)])
            }
        }
        let loader = try ChildProcess(executable: Self.cli, arguments: ["-p", "\(port)", "--pipe"], stdin: .pipe, stdout: .pipe, stderr: .null)
        try loader.write(Array(protocolText.utf8))
        loader.closeInput()
        let output = String(decoding: loader.readToEnd().output, as: UTF8.self)
        loader.wait()
        // "errors: 0, replies: 100000"
        guard output.contains("errors: 0, replies: \(keys)") else { throw ValidationError("redis-cli --pipe: \(output)") }
    }

    /// The number of keys (`DBSIZE`), asked with redis-cli.
    func keys() throws -> Int {
        let output = String(decoding: try ToolOutput.capture(Self.cli, ["-p", "\(port)", "DBSIZE"]), as: UTF8.self)
        guard let count = Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw ValidationError("DBSIZE: \(output)") }
        return count
    }

    func expectKeys(_ keys: Int) async throws {
        let count = try self.keys()
        guard count == keys else { throw ValidationError("the restored redis holds \(count) keys, not \(keys)") }
    }

    /// Waits until redis holds no socket but its listener: clients that closed are closed on its side too.
    func awaitNoClients() async throws {
        for _ in 0..<2000 {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd")) ?? []
            let sockets = fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child.pid)/fd/\($0)"))?.hasPrefix("socket:") == true }
            if sockets.count == 1 { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ValidationError("redis kept a client connection")
    }

    /// The AOF files as they are (the dump's state), to be put back before each restore: a
    /// restored server may append, and CRIU checks the size of the files a process holds.
    func snapshotFiles() throws -> [String: Data] {
        let aof = directory + "/appendonlydir"
        var files: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: aof) {
            files[aof + "/" + name] = try Data(contentsOf: URL(fileURLWithPath: aof + "/" + name))
        }
        return files
    }

    func putBack(_ files: [String: Data]) throws {
        for (path, data) in files where (try? Data(contentsOf: URL(fileURLWithPath: path))) != data {
            try data.write(to: URL(fileURLWithPath: path))
        }
    }
}
