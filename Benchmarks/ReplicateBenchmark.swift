import ArgumentParser
import Foundation
import Glibc
import MitosisKernel

/// Hot standby under load (issue 13's acceptance run): redis-server with `appendonly yes` in
/// network namespace A under a bounded write load (`redis-benchmark -t set,incr` with a fixed
/// number of clients, no pipelining), protected onto `mitosis standby` in namespace B over a
/// veth pair, at one epoch per `--interval`. Reports what `protect` and `standby` measured
/// (freeze p50/p99, lag p99 in ms and epochs, epochs/s, MB/s, where each epoch's time went) and
/// redis's throughput (commands/s from `INFO stats`) without protect before and after, and with
/// it, in the same run: the overhead is their ratio.
///
/// Needs redis-server, redis-benchmark, redis-cli, iproute2 and nftables (scripts/setup) and
/// root; builds nothing: `swift build -c release` first, then `.build/release/mitosis-bench replicate`.
struct ReplicateBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "replicate",
                                                    abstract: "redis under write load protected onto a standby in another network namespace.")

    @Option(help: "How long protection is measured: seconds, or with a unit (90s, 5m). The issue's acceptance run is 5m.",
            transform: ReplicateBenchmark.parseDuration) var duration = 30
    @Option(help: "Seconds of redis alone, measured before and after protection.") var baseline = 10
    @Option(help: "Milliseconds between epochs.") var interval = 50
    @Option(help: "redis-benchmark clients (the load: each waits for its answer before the next command).") var clients = 4
    @Option(help: "Keys the load writes (redis-benchmark -r).") var keyspace = 10_000
    @Option(help: "Bytes per value (redis-benchmark -d).") var valueSize = 64
    @Option(help: "Where redis's data and the standby's images go (removed afterwards).") var scratch = NSTemporaryDirectory()
    @Option(help: "Keep the standby's directory here (for `mitosis-bench manifest`).") var keep: String?

    static let ip = "/usr/sbin/ip"

    func run() async throws {
        for tool in ["/usr/bin/redis-server", "/usr/bin/redis-benchmark", "/usr/bin/redis-cli", Self.ip, "/usr/sbin/nft"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            throw ValidationError("\(tool) is missing (scripts/setup installs it)")
        }
        let mitosis = siblingExecutable("mitosis")
        let directory = scratch + "/mitosis-bench-replicate-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: directory + "/redis", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let hosts = try Hosts()
        defer { hosts.remove() }
        let (a, b) = (hosts.prefix(hosts.a), hosts.prefix(hosts.b))

        let redis = try ChildProcess(executable: a[0], arguments: Array(a.dropFirst()) + [
            "/usr/bin/redis-server", "--bind", hosts.addressA, "--port", "6379", "--protected-mode", "no", "--appendonly", "yes",
            "--dir", directory + "/redis", "--save", "", "--daemonize", "no", "--logfile", directory + "/redis.log",
        ], stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        defer { redis.kill() }
        let cli = a + ["/usr/bin/redis-cli", "-h", hosts.addressA, "-p", "6379"]
        let deadline = ContinuousClock.now + .seconds(20)
        while (try? Self.output(cli + ["ping"]))?.contains("PONG") != true {
            guard ContinuousClock.now < deadline, redis.isRunning else { throw ValidationError("redis-server did not start (\(directory)/redis.log)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        let load = try ChildProcess(executable: a[0], arguments: Array(a.dropFirst()) + [
            "/usr/bin/redis-benchmark", "-h", hosts.addressA, "-p", "6379", "-t", "set,incr", "-c", "\(clients)", "-P", "1",
            "-r", "\(keyspace)", "-d", "\(valueSize)", "-n", "100000000", "-l", "-q",
        ], stdin: .null, stdout: .null, stderr: .null)
        defer { load.kill() }
        try await Task.sleep(for: .seconds(2))
        print("redis-server \(redis.pid) in \(hosts.a) (\(hosts.addressA)), appendonly yes; load: redis-benchmark -t set,incr -c \(clients) -r \(keyspace) -d \(valueSize)")

        let before = try await Self.throughput(cli, seconds: baseline)

        let standbyLog = directory + "/standby.log", protectLog = directory + "/protect.log"
        let standby = try Self.service(b + [mitosis, "standby", "--listen", "\(hosts.addressB):7400", "--images", directory + "/standby"], log: standbyLog)
        defer { standby.kill() }
        try await Self.awaitLog(standbyLog, "listening on", standby)
        let protect = try Self.service(a + [mitosis, "protect", "\(redis.pid)", "--standby", "\(hosts.addressB):7400",
                                            "--interval", "\(interval)", "--data", directory + "/redis/appendonlydir"], log: protectLog)
        defer { protect.kill() }
        try await Self.awaitLog(standbyLog, "committed", standby, timeout: .seconds(60))
        let during = try await Self.throughput(cli, seconds: duration)
        protect.signal(SIGTERM)
        try await Self.awaitExit(protect)
        standby.signal(SIGTERM)
        try await Self.awaitExit(standby)
        if let keep { try FileManager.default.moveItem(atPath: directory + "/standby", toPath: keep) }

        let after = try await Self.throughput(cli, seconds: baseline)
        load.kill()

        let protectText = (try? String(contentsOfFile: protectLog, encoding: .utf8)) ?? ""
        let standbyText = (try? String(contentsOfFile: standbyLog, encoding: .utf8)) ?? ""
        guard let summary = protectText.split(separator: "\n").last(where: { $0.hasPrefix("protected process") }) else {
            throw ValidationError("protect printed no summary:\n\(protectText.suffix(3000))")
        }
        print("protect: " + summary)
        for line in protectText.split(separator: "\n") where line.hasPrefix("epoch phases") || line.hasPrefix("checkpoint phases")
            || line.hasPrefix("files phases") {
            print("protect " + line)
        }
        for line in standbyText.split(separator: "\n") where line.hasPrefix("standby served") || line.hasPrefix("epoch phases") {
            print("standby: " + line)
        }
        if let status = standbyText.split(separator: "\n").last(where: { $0.contains(" committed (term ") }),
           let range = status.range(of: "epoch ") {
            print("standby's last status: " + status[range.lowerBound...])
        }
        let alone = (before + after) / 2
        print(String(format: "redis commands/s: alone %.0f (before %.0f, after %.0f), protected %.0f: %.3f× (%.1f %% overhead)",
                     alone, before, after, during, during / alone, (1 - during / alone) * 100))
        print(String(format: "goals: freeze p99 ≤ 20 ms, lag p99 ≤ 2 epochs (%d ms; an epoch's lag: from its freeze to its acknowledgement, "
                     + "its phase `total`: from its checkpoint's start), %.0f epochs/s; ", 2 * interval, 1000 / Double(interval))
              + "measured over \(duration) s, machine load average \(Self.loadAverage()) (1, 5, 15 min) at the end")
    }

    /// `300`, `300s`, `5m`: seconds.
    static func parseDuration(_ text: String) throws -> Int {
        let units: [(String, Int)] = [("s", 1), ("m", 60), ("h", 3600)]
        let (digits, scale) = units.first { text.hasSuffix($0.0) }.map { (String(text.dropLast()), $0.1) } ?? (text, 1)
        guard let value = Int(digits), value > 0 else { throw ValidationError("--duration \(text): seconds, or a number with s, m or h") }
        return value * scale
    }

    /// Commands per second redis processed over `seconds` (`total_commands_processed`).
    static func throughput(_ cli: [String], seconds: Int) async throws -> Double {
        func processed() throws -> Double {
            let info = try output(cli + ["info", "stats"])
            guard let line = info.split(whereSeparator: \.isNewline).first(where: { $0.hasPrefix("total_commands_processed:") }),
                  let value = Double(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("no total_commands_processed in redis's INFO")
            }
            return value
        }
        let clock = ContinuousClock()
        let (first, start) = (try processed(), clock.now)
        try await Task.sleep(for: .seconds(seconds))
        let (last, end) = (try processed(), clock.now)
        return (last - first) / (Double((end - start).components.seconds) + Double((end - start).components.attoseconds) / 1e18)
    }

    /// `/proc/loadavg`'s first three fields: the machine's load, for reading the figures.
    static func loadAverage() -> String {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").prefix(3).joined(separator: " ")
    }

    static func output(_ command: [String]) throws -> String {
        String(decoding: try ToolOutput.capture(command[0], Array(command.dropFirst())), as: UTF8.self)
    }

    /// A long-running command with both streams appended to `log`.
    static func service(_ command: [String], log: String) throws -> ChildProcess {
        try ChildProcess(executable: "/bin/sh", arguments: ["-c", "exec \"$@\" >>\"$0\" 2>&1", log] + command,
                         stdin: .null, stdout: .null, stderr: .null)
    }

    static func awaitLog(_ log: String, _ needle: String, _ child: ChildProcess, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains(needle) == false {
            guard ContinuousClock.now < deadline, child.isRunning else {
                throw ValidationError("no '\(needle)' in \(log):\n\(((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    static func awaitExit(_ child: ChildProcess, timeout: Duration = .seconds(30)) async throws {
        let deadline = ContinuousClock.now + timeout
        while child.isRunning {
            if ContinuousClock.now >= deadline { child.kill() }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Two network namespaces joined by a veth pair, addresses only inside them; removed by `remove`.
    struct Hosts {
        let a: String, b: String, addressA: String, addressB: String
        private let veth: String

        init() throws {
            let tag = String(UUID().uuidString.prefix(6)).lowercased()
            (a, b, veth) = ("mbench-\(tag)-a", "mbench-\(tag)-b", "v\(tag)a")
            let subnet = "10.\(Int.random(in: 100...250)).\(Int.random(in: 1...250))"
            (addressA, addressB) = (subnet + ".1", subnet + ".2")
            let steps: [[String]] = [
                ["netns", "add", a], ["netns", "add", b],
                ["link", "add", veth, "type", "veth", "peer", "name", "v\(tag)b"],
                ["link", "set", veth, "netns", a], ["link", "set", "v\(tag)b", "netns", b],
                ["-n", a, "addr", "add", addressA + "/24", "dev", veth], ["-n", b, "addr", "add", addressB + "/24", "dev", "v\(tag)b"],
                ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"],
                ["-n", a, "link", "set", veth, "up"], ["-n", b, "link", "set", "v\(tag)b", "up"],
            ]
            for step in steps {
                let child = try ChildProcess(executable: ReplicateBenchmark.ip, arguments: step, stdin: .null, stdout: .null, stderr: .null)
                guard ChildProcess.exitCode(of: child.wait()) == 0 else {
                    remove()
                    throw ValidationError("ip \(step.joined(separator: " ")) failed")
                }
            }
        }

        func prefix(_ host: String) -> [String] { [ReplicateBenchmark.ip, "netns", "exec", host] }

        func remove() {
            for arguments in [["link", "del", veth], ["netns", "del", a], ["netns", "del", b]] {
                _ = try? ChildProcess(executable: ReplicateBenchmark.ip, arguments: arguments, stdin: .null, stdout: .null, stderr: .null).wait()
            }
        }
    }
}
