import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Downtime of moving Debian's nginx (master + 2 workers, its own configuration on a loopback
/// port) with `mitosis dump --tree --kill` then `mitosis restore`, beside CRIU's `criu dump` then
/// `criu restore -d` of a second nginx started alike, when a CRIU 4.x binary is available.
/// Downtime is what a client asking all along sees: the longest time between two answers
/// (CRIU freezes the whole tree for its dump; Mitosis freezes one member at a time and the tree
/// serves until the kill at the dump's end); beside it, the time from the dump's start to the
/// first answer after the restore, in parts. Both sides are the command-line tools (process
/// start-up included), best of `--runs`, in one run. CRIU gets `--tcp-established
/// --skip-in-flight --network-lock nftables` (the asking client's connections are open or
/// queued during its dump; this machine has no iptables), as Mitosis locks with nftables by
/// default. The workers run as root (`user root;`) on both sides: CRIU's dump reads the
/// workers' limits with prlimit, which for another user needs CAP_SYS_RESOURCE (absent here).
///
/// Needs the CLI beside the benchmark: `swift build -c release --product mitosis` first.
struct NginxRestoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore-nginx",
                                                    abstract: "Downtime of dump --tree --kill + restore of nginx, beside CRIU's dump + restore.")

    @Option(help: "Moves per side; the best one is reported.") var runs = 3
    @Option(help: "Where nginx's files and the images go (removed afterwards).") var scratch = NSTemporaryDirectory()

    static let nginx = "/usr/sbin/nginx"

    func run() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.nginx) else {
            print("restore-nginx skipped: no \(Self.nginx) (Debian package nginx, scripts/setup)")
            return
        }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let mitosis = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("mitosis").path
        guard FileManager.default.isExecutableFile(atPath: mitosis) else { throw ValidationError("\(mitosis) is missing: swift build -c release --product mitosis") }
        let directory = scratch + "/mitosis-bench-nginx-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (criu, criuNote) = RestoreBenchmark.findCriu()
        print("CRIU: " + criuNote)

        var mitosisBest: Move?
        for run in 0..<runs {
            let move = try await Self.move(in: directory + "/mitosis-\(run)", dump: { master, images in
                (mitosis, ["dump", "\(master)", "--tree", "--images", images, "--kill"])
            }, restore: { images in (mitosis, ["restore", images]) })
            print(String(format: "   mitosis run %d: downtime %.1f ms, dump start to first answer %.1f ms", run + 1, move.gap, move.total))
            if mitosisBest == nil || move.gap < mitosisBest!.gap { mitosisBest = move }
        }
        let best = mitosisBest!
        print(String(format: "nginx (master + 2 workers):\n   mitosis dump --tree --kill + restore: downtime %.1f ms (best of %d; longest gap between answers of a client asking all along); dump start to first answer %.1f ms: dump %.1f, pids freed by init %.1f, restore %.1f, first answer %.1f; %d of %d requests 200 byte-identical after",
                     best.gap, runs, best.total, best.dump, best.freed, best.restore, best.answer, best.good, Move.requests))
        guard let criu else { return }
        do {
            var criuBest: Move?
            for run in 0..<runs {
                let move = try await Self.move(in: directory + "/criu-\(run)", dump: { master, images in
                    (criu, ["dump", "-t", "\(master)", "--tcp-established", "--skip-in-flight", "--network-lock", "nftables", "-D", images, "-o", "dump.log"])
                }, restore: { images in (criu, ["restore", "-d", "--tcp-established", "--network-lock", "nftables", "-D", images, "-o", "restore.log"]) })
                print(String(format: "   criu run %d: downtime %.1f ms, dump start to first answer %.1f ms", run + 1, move.gap, move.total))
                if criuBest == nil || move.gap < criuBest!.gap { criuBest = move }
            }
            let other = criuBest!
            print(String(format: "   CRIU dump + restore -d:              downtime %.1f ms (best of %d); dump start to first answer %.1f ms: dump %.1f, pids freed by init %.1f, restore %.1f, first answer %.1f; %d of %d requests 200 byte-identical after\n   mitosis / criu: downtime %.2f, dump start to first answer %.2f, restore %.2f",
                         other.gap, runs, other.total, other.dump, other.freed, other.restore, other.answer, other.good, Move.requests,
                         best.gap / other.gap, best.total / other.total, best.restore / other.restore))
        } catch {
            print("   CRIU dump + restore -d:              failed: \(error)")
        }
    }

    /// One move of one nginx: times in milliseconds from the start of the dump.
    struct Move {
        static let requests = 200
        var dump: Double
        var freed: Double
        var restore: Double
        var answer: Double
        /// The longest time between two answers of a client asking all along (`AnswerGapProbe`).
        var gap: Double
        var good: Int
        /// From the start of the dump to the first answer after the restore.
        var total: Double { dump + freed + restore + answer }
    }

    /// Starts nginx in `directory`, dumps it with `dump(master, images)` (which must kill it),
    /// waits until its pids are free, restores it with `restore(images)`, times the first answer,
    /// checks `Move.requests` answers, and stops it with SIGQUIT.
    static func move(in directory: String, dump: (Int32, String) -> (String, [String]),
                     restore: (String) -> (String, [String])) async throws -> Move {
        let server = try NginxServer(directory: directory)
        let master = try await server.start()
        defer { server.stop() }
        guard try await server.get() == 200 else { throw ValidationError("nginx does not answer before the dump") }
        let images = directory + "/images"
        let (dumpTool, dumpArguments) = dump(master, images)
        let (restoreTool, restoreArguments) = restore(images)
        if dumpTool.hasSuffix("criu") { try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true) }
        let members = [master] + Array(server.workers(of: master))
        let probe = AnswerGapProbe(port: server.port, body: server.body)
        try await probe.awaitAnswers()
        let dumped = try await Blocking.run("bench-dump") { try TimedRun.run(dumpTool, dumpArguments) }
        let clock = ContinuousClock()
        let gone = clock.now
        while members.contains(where: { kill($0, 0) == 0 }) {
            guard clock.now - gone < .seconds(10) else {
                let errors = ((try? String(contentsOfFile: images + "/dump.log", encoding: .utf8)) ?? "").split(separator: "\n")
                    .filter { $0.hasPrefix("Error") && !$0.contains("RLIMIT_NOFILE for self") }.prefix(2)
                throw ValidationError("\(dumpTool) left nginx running: \(errors.joined(separator: " / "))")
            }
            try await Task.sleep(for: .milliseconds(1))
        }
        let freed = clock.now - gone
        let restored = try await Blocking.run("bench-restore") { try TimedRun.run(restoreTool, restoreArguments) }
        guard kill(master, 0) == 0 else { throw ValidationError("\(restoreTool) did not bring nginx back (see \(images))") }
        let asking = clock.now
        while try await server.get() != 200 {
            guard clock.now - asking < .seconds(10) else { throw ValidationError("the restored nginx does not answer") }
            try await Task.sleep(for: .milliseconds(1))
        }
        let answered = clock.now - asking
        try await Task.sleep(for: .milliseconds(50))
        let gap = try await probe.stop()
        var good = 0
        for _ in 0..<Move.requests where try await server.get(exact: true) == 200 { good += 1 }
        return Move(dump: dumped.wall.inMilliseconds, freed: freed.inMilliseconds, restore: restored.wall.inMilliseconds,
                    answer: answered.inMilliseconds, gap: gap, good: good)
    }
}

/// An nginx of the benchmark: its own directory, configuration, loopback port and page.
struct NginxServer {
    let directory: String
    let port: UInt16
    let body: [UInt8]

    init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory + "/html", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/logs", withIntermediateDirectories: true)
        port = UInt16(20_000 + Int.random(in: 0..<20_000))
        var generator = SystemRandomNumberGenerator()
        body = (0..<16_384).map { _ in UInt8.random(in: 32...126, using: &generator) }
        FileManager.default.createFile(atPath: directory + "/html/index.html", contents: Data(body))
        try """
            daemon on;
            master_process on;
            worker_processes 2;
            user root;
            pid \(directory)/nginx.pid;
            error_log \(directory)/logs/error.log notice;
            events { worker_connections 256; }
            http {
                access_log off;
                client_body_temp_path \(directory)/body;
                proxy_temp_path \(directory)/proxy;
                fastcgi_temp_path \(directory)/fastcgi;
                uwsgi_temp_path \(directory)/uwsgi;
                scgi_temp_path \(directory)/scgi;
                server { listen 127.0.0.1:\(port); root \(directory)/html; }
            }
            """.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
    }

    /// Starts nginx (descriptors 0-2 only) and returns its master once both workers run.
    func start() async throws -> Int32 {
        let launcher = try ChildProcess(executable: NginxRestoreBenchmark.nginx, arguments: ["-c", directory + "/nginx.conf", "-p", directory],
                                        stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let status = try await Blocking.run("nginx-launcher") { launcher.wait() }
        guard ChildProcess.exitCode(of: status) == 0 else { throw ValidationError("nginx did not start (see \(directory)/logs/error.log)") }
        let text = try String(contentsOfFile: directory + "/nginx.pid", encoding: .utf8)
        guard let master = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw ValidationError("no pid in nginx.pid") }
        for _ in 0..<500 where workers(of: master).count < 2 { try await Task.sleep(for: .milliseconds(10)) }
        return master
    }

    func workers(of master: Int32) -> Set<Int32> {
        let text = (try? String(contentsOfFile: "/proc/\(master)/task/\(master)/children", encoding: .utf8)) ?? ""
        return Set(text.split(separator: " ").compactMap { Int32($0) })
    }

    /// Kills whatever nginx this directory's pid file names, master first (it would respawn workers).
    func stop() {
        guard let text = try? String(contentsOfFile: directory + "/nginx.pid", encoding: .utf8),
              let master = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return }
        let workers = workers(of: master)
        for pid in [master] + Array(workers) { kill(pid, SIGKILL) }
    }

    /// The status of one `GET /` (0 when it failed); with `exact`, 0 unless the body is the page's.
    func get(exact: Bool = false) async throws -> Int {
        let port = self.port, body = self.body
        return try await Blocking.run("nginx-get") { Self.fetch(port: port, body: body, exact: exact) }
    }

    /// One `GET /` over HTTP/1.0, blocking (at most 2 s per read).
    static func fetch(port: UInt16, body: [UInt8], exact: Bool) -> Int {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return 0 }
            defer { close(fd) }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
            let connected = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else { return 0 }
            let request = Array("GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
            guard write(fd, request, request.count) == request.count else { return 0 }
            var response: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n <= 0 { if n < 0 { return 0 }; break }
                response += chunk[0..<n]
            }
            let text = String(decoding: response.prefix(16), as: UTF8.self)
            let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
            if exact, !response.suffix(body.count).elementsEqual(body) || response.count < body.count { return 0 }
            return status
    }
}

/// A client asking nginx again and again on a thread of its own, from before the dump until
/// stopped: the longest time between two consecutive answers (200) is the downtime a client
/// sees, whichever way the server was unavailable (frozen, killed, not yet restored).
final class AnswerGapProbe: @unchecked Sendable {  // `lock` guards the mutable state
    private let lock = NSLock()
    private var running = true
    private var longest = Duration.zero
    private var answers = 0
    private var task: Task<Void, Error>?

    init(port: UInt16, body: [UInt8]) {
        task = Task {
            try await Blocking.run("nginx-probe") { [self] in
                let clock = ContinuousClock()
                var last = clock.now
                while lock.withLock({ running }) {
                    if NginxServer.fetch(port: port, body: body, exact: false) == 200 {
                        let now = clock.now
                        lock.withLock {
                            longest = max(longest, now - last)
                            answers += 1
                        }
                        last = now
                    } else {
                        usleep(500)  // refused while nothing listens: ask again shortly
                    }
                }
            }
        }
    }

    /// Returns once the probe has had a few answers: it asks from before the dump.
    func awaitAnswers() async throws {
        for _ in 0..<1000 where lock.withLock({ answers < 3 }) { try await Task.sleep(for: .milliseconds(5)) }
        guard lock.withLock({ answers >= 3 }) else { throw ValidationError("the probe client gets no answers") }
    }

    /// Stops the probe and returns the longest gap between answers, in milliseconds.
    func stop() async throws -> Double {
        lock.withLock { running = false }
        try await task?.value
        return lock.withLock { longest.inMilliseconds }
    }
}
