import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Downtime of Debian's redis-server with live TCP clients: `mitosis dump --kill` followed by
/// `mitosis restore`, beside CRIU's `criu dump --tcp-established` followed by `criu restore -d`
/// of the same state (a second redis started alike, with as many clients), when a CRIU 4.x
/// binary is available. Both run in a network namespace of the benchmark, on its loopback, each
/// with its network lock (Mitosis's nftables table; CRIU's `--network-lock nftables`); both
/// sides alternate, `--runs` times. Downtime is the wall time of the dumping tool plus that of
/// the restoring one (each a process of its own, as an operator runs them); every client then
/// sends `GET` on its same connection and must get its own value back.
struct LiveRedisBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "live-redis",
                                                    abstract: "Downtime of dump --kill + restore of redis with live TCP clients, beside CRIU's.")

    @Option(help: "Client connections held open across the dump and restore.") var connections = 100
    @Option(help: "Runs of each tool, alternating; medians are reported.") var runs = 3
    @Option(help: "Where images are written (removed afterwards).") var scratch = NSTemporaryDirectory()

    static let server = "/usr/bin/redis-server"
    static let nsenter = "/usr/bin/nsenter"

    func run() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.server) else { throw ValidationError("needs \(Self.server) (Debian's redis-server)") }
        let mitosis = URL(fileURLWithPath: try Kernel.readLink("/proc/self/exe")).deletingLastPathComponent().appendingPathComponent("mitosis").path
        guard FileManager.default.isExecutableFile(atPath: mitosis) else { throw ValidationError("needs \(mitosis): swift build -c release --product mitosis") }
        let (criu, criuNote) = RestoreBenchmark.findCriu()
        print("CRIU: " + (criu.map { "\($0): criu dump -t PID --tcp-established --shell-job --network-lock nftables, then criu restore -d with the same options" } ?? criuNote))
        let namespace = "mbench-\(getpid())"
        let directory = scratch + "/mitosis-bench-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let connections = self.connections, runs = self.runs
        try await Blocking.run("live-redis") {
            try Self.command("/usr/sbin/ip", ["netns", "add", namespace])
            defer {
                for pid in (try? ToolOutput.capture("/usr/sbin/ip", ["netns", "pids", namespace])).map({ String(decoding: $0, as: UTF8.self) })?
                    .split(separator: "\n").compactMap({ Int32($0) }) ?? [] { _ = try? Kernel.sendSignal(pid: pid, SIGKILL) }
                try? Self.command("/usr/sbin/ip", ["netns", "del", namespace])
            }
            try Self.command("/usr/sbin/ip", ["-n", namespace, "link", "set", "lo", "up"])
            var samples: [String: [(dump: Double, restore: Double)]] = [:]
            for run in 0..<runs {
                var tools = [("mitosis", mitosis)]
                if let criu { tools.append(("criu", criu)) }
                for (name, tool) in tools {
                    let images = "\(directory)/\(name)-\(run)"
                    let measured = try Self.measure(tool: name, path: tool, namespace: namespace, connections: connections,
                                                    images: images, redisDirectory: "\(directory)/redis-\(name)-\(run)")
                    samples[name, default: []].append(measured)
                }
            }
            let version = (try? ToolOutput.capture(Self.server, ["--version"])).map { String(decoding: $0, as: UTF8.self) }?
                .split(separator: " ").first { $0.hasPrefix("v=") }.map { String($0.dropFirst(2)) } ?? "?"
            print("redis-server \(version) with \(connections) live connections (loopback of a network namespace of the benchmark):")
            func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
            var downtimes: [String: Double] = [:]
            for (name, label) in [("mitosis", "mitosis dump --kill + restore"), ("criu", "criu dump + restore -d    ")] {
                guard let values = samples[name] else { continue }
                let downtime = median(values.map { $0.dump + $0.restore })
                downtimes[name] = downtime
                print(String(format: "   %@:  downtime %.1f ms (median of %d; dump %.1f + restore %.1f ms); all %d clients answered on their connections",
                             label, downtime, values.count, median(values.map(\.dump)), median(values.map(\.restore)), connections))
            }
            if let ours = downtimes["mitosis"], let theirs = downtimes["criu"] {
                print(String(format: "   mitosis / criu = %.2f", ours / theirs))
            }
        }
    }

    /// One run of one tool: a fresh redis with `connections` clients mid-session, dumped (and
    /// killed) then restored; every client's next `GET` on its connection checked. Returns
    /// the dump's and the restore's wall times in milliseconds.
    static func measure(tool: String, path: String, namespace: String, connections: Int, images: String,
                        redisDirectory: String) throws -> (dump: Double, restore: Double) {
        // mitosis dump makes its image directory; criu writes into an existing one.
        if tool == "criu" { try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true) }
        try FileManager.default.createDirectory(atPath: redisDirectory, withIntermediateDirectories: true)
        let config = "port 6379\nbind 127.0.0.1\nappendonly no\nsave \"\"\ndaemonize no\ndir \(redisDirectory)\nlogfile \(redisDirectory)/redis.log\n"
        try config.write(toFile: redisDirectory + "/redis.conf", atomically: true, encoding: .utf8)
        let redis = try ChildProcess(executable: nsenter, arguments: ["--net=/run/netns/\(namespace)", "--", server, redisDirectory + "/redis.conf"],
                                     stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let pid = redis.pid
        var clients: [Int32] = []
        defer {
            for fd in clients { close(fd) }
            _ = try? Kernel.sendSignal(pid: pid, SIGKILL)
            redis.wait()
            for _ in 0..<500 where FileManager.default.fileExists(atPath: "/proc/\(pid)") { usleep(10_000) }
        }
        for index in 0..<connections {
            let fd = try connect(in: namespace)
            clients.append(fd)
            guard try call(fd, ["SET", "key:\(index)", "value:\(index)"]) == "+OK\r\n" else { throw ValidationError("SET failed") }
        }
        let dump: TimedRun, restore: TimedRun
        let enter = [nsenter, "--net=/run/netns/\(namespace)", "--"]
        if tool == "mitosis" {
            dump = try checkedRun(path, ["dump", "\(pid)", "--images", images, "--kill"], what: "mitosis dump")
            redis.wait()
            restore = try checkedRun(path, ["restore", images, "--netns", namespace, "--json"], what: "mitosis restore")
        } else {
            let options = ["--tcp-established", "--shell-job", "--network-lock", "nftables", "-D", images]
            dump = try checkedRun(enter[0], Array(enter.dropFirst()) + [path, "dump", "-t", "\(pid)"] + options + ["-o", "dump.log"], what: "criu dump (\(images)/dump.log)")
            redis.wait()
            restore = try checkedRun(enter[0], Array(enter.dropFirst()) + [path, "restore", "-d"] + options + ["-o", "restore.log"], what: "criu restore (\(images)/restore.log)")
        }
        for (index, fd) in clients.enumerated() {
            let expected = "$\("value:\(index)".utf8.count)\r\nvalue:\(index)\r\n"
            let reply = try call(fd, ["GET", "key:\(index)"])
            guard reply == expected else { throw ValidationError("\(tool): client \(index) got \(reply.debugDescription) after the restore") }
        }
        return (dump.wall.inMilliseconds, restore.wall.inMilliseconds)
    }

    static func checkedRun(_ executable: String, _ arguments: [String], what: String) throws -> TimedRun {
        let clock = ContinuousClock()
        let start = clock.now
        let child = try ChildProcess(executable: executable, arguments: arguments, stdin: .null, stdout: .pipe, stderr: .pipe)
        let (output, errors) = child.readToEnd()
        let status = child.wait()
        let wall = clock.now - start
        guard ChildProcess.exitCode(of: status) == 0 else {
            throw ValidationError("\(what) failed: \(String(decoding: errors, as: UTF8.self).split(separator: "\n").first ?? "")")
        }
        // `mitosis restore --json`: where its time went.
        if let json = try? JSONSerialization.jsonObject(with: Data(output)) as? [String: Any], let phases = json["phases_ms"] as? [String: Double] {
            let total = json["restore_ms"] as? Double ?? 0
            print("      mitosis restore: " + String(format: "%.1f ms inside (", total)
                  + ["husk", "empty", "memory", "state", "resume"].map { String(format: "%@ %.1f", $0, phases[$0] ?? 0) }.joined(separator: ", ")
                  + String(format: "), %.1f ms around it (process start, opening the image chain)", wall.inMilliseconds - total))
        }
        return TimedRun(wall: wall, cpu: .zero)
    }

    static func command(_ executable: String, _ arguments: [String]) throws {
        _ = try checkedRun(executable, arguments, what: ([executable] + arguments).joined(separator: " "))
    }

    /// A client socket made in the namespace and connected to redis on its loopback; replies
    /// time out after 30 s rather than hang.
    static func connect(in namespace: String) throws -> Int32 {
        let fd = try Kernel.inNetworkNamespace(named: namespace) { () -> Int32 in
            socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        guard fd >= 0 else { throw ValidationError("socket in \(namespace) failed") }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(6379).bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        for _ in 0..<500 {
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if result == 0 { return fd }
            usleep(10_000)  // redis is still starting
        }
        close(fd)
        throw ValidationError("redis did not answer in \(namespace)")
    }

    /// Sends one RESP command and reads one short reply (the benchmark's replies fit one read).
    static func call(_ fd: Int32, _ command: [String]) throws -> String {
        var out = "*\(command.count)\r\n"
        for argument in command { out += "$\(argument.utf8.count)\r\n\(argument)\r\n" }
        let bytes = Array(out.utf8)
        guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else {
            throw ValidationError("send: errno \(errno)")
        }
        var buffer = [UInt8](repeating: 0, count: 256)
        var reply: [UInt8] = []
        while !(reply.count >= 2 && reply.suffix(2) == [13, 10] && (reply.first != UInt8(ascii: "$") || reply.filter { $0 == 10 }.count >= 2)) {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { throw ValidationError("recv: \(count == 0 ? "connection closed" : "errno \(errno)")") }
            reply += buffer[0..<count]
        }
        return String(decoding: reply, as: UTF8.self)
    }
}
