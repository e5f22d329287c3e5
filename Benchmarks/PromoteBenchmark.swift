import ArgumentParser
import Foundation
import Glibc
import MitosisKernel

/// Warm promotion beside a cold restore of the same epoch (issue 13: "warm promotion ≤ 100 ms
/// for redis, reported beside a cold restore of the same epoch"). Each run: redis-server
/// (`appendonly yes`) in network namespace A under `redis-benchmark -t set,incr`, protected onto
/// `mitosis standby --warm --pidns` in namespace B; after a few seconds of epochs redis, protect
/// and the load are killed with SIGKILL and `mitosis promote --json` runs in B: the warm clone
/// is finished. Then the same epochs, copied to a directory no standby serves, are promoted
/// again: a cold restore of the same epoch (with its data files). Both promoted redis answer
/// PING on B's address before they are killed. Prints each run and the medians, with the steps.
///
/// Needs redis-server, redis-benchmark, redis-cli, iproute2, nftables and root; builds nothing:
/// `swift build -c release` first, then `.build/release/mitosis-bench promote`.
struct PromoteBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "promote",
                                                    abstract: "Warm promotion of redis beside a cold restore of the same epoch.")

    @Option(help: "Runs (each: a fresh redis, protected, killed, promoted warm then cold).") var runs = 5
    @Option(help: "Seconds of epochs under load before the primary is killed.") var seconds = 4
    @Option(help: "Milliseconds between epochs.") var interval = 50
    @Option(help: "Where redis's data and the standby's images go (removed afterwards).") var scratch = NSTemporaryDirectory()

    func run() async throws {
        for tool in ["/usr/bin/redis-server", "/usr/bin/redis-benchmark", "/usr/bin/redis-cli", ReplicateBenchmark.ip, "/usr/sbin/nft"]
        where !FileManager.default.isExecutableFile(atPath: tool) {
            throw ValidationError("\(tool) is missing (scripts/setup installs it)")
        }
        let hosts = try ReplicateBenchmark.Hosts()
        defer { hosts.remove() }
        print("redis-server (appendonly yes) in \(hosts.a) under redis-benchmark -t set,incr -c 4, protected every \(interval) ms onto a warm standby in \(hosts.b) for \(seconds) s, killed with SIGKILL, promoted")
        var warm: [Promoted] = [], cold: [Promoted] = []
        for run in 1...runs {
            let (w, c) = try await once(hosts)
            print(String(format: "run %d: epoch %@ warm %.1f ms (%@), cold %.1f ms (%@)", run, w.epoch, w.total, w.describe(), c.total, c.describe()))
            warm.append(w)
            cold.append(c)
        }
        let (w, c) = (Promoted.median(warm), Promoted.median(cold))
        print(String(format: "median of %d: warm %.1f ms, cold %.1f ms: warm is %.1f× faster", runs, w.total, c.total, c.total / w.total))
        print("  warm steps: " + w.describe())
        print("  cold steps: " + c.describe())
        print("goal: warm promotion ≤ 100 ms")
    }

    /// One promotion's figures from `promote --json`: the total and each step, in ms.
    struct Promoted {
        var epoch = ""
        var total: Double
        var steps: [(String, Double)]

        init(json: [String: Any]) {
            epoch = "\(json["epoch"] ?? "?")"
            total = json["total_milliseconds"] as? Double ?? -1
            steps = []
            if let promotion = json["steps"] as? [String: Double] { steps += promotion.sorted { $0.key < $1.key }.map { ($0.key, $0.value) } }
            if let phases = json["phases"] as? [String: Double] { steps += phases.sorted { $0.key < $1.key }.map { ("restore." + $0.key, $0.value) } }
        }

        init(total: Double, steps: [(String, Double)]) {
            self.total = total
            self.steps = steps
        }

        func describe() -> String { steps.map { String(format: "%@ %.1f", $0.0, $0.1) }.joined(separator: ", ") }

        /// The median total and, per step, the median over the runs that have it.
        static func median(_ all: [Promoted]) -> Promoted {
            func middle(_ values: [Double]) -> Double {
                let sorted = values.sorted()
                return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            }
            let names = all.flatMap { $0.steps.map(\.0) }.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            return Promoted(total: middle(all.map(\.total)),
                            steps: names.map { name in (name, middle(all.compactMap { $0.steps.first { $0.0 == name }?.1 })) })
        }
    }

    /// One run: the warm promotion, then the cold one of the same epochs.
    func once(_ hosts: ReplicateBenchmark.Hosts) async throws -> (Promoted, Promoted) {
        let mitosis = siblingExecutable("mitosis")
        let directory = scratch + "/mitosis-bench-promote-" + UUID().uuidString.prefix(8)
        let images = directory + "/standby", copy = directory + "/cold"
        try FileManager.default.createDirectory(atPath: directory + "/redis", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (a, b) = (hosts.prefix(hosts.a), hosts.prefix(hosts.b))
        let redis = try ChildProcess(executable: a[0], arguments: Array(a.dropFirst()) + [
            "/usr/bin/redis-server", "--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--appendonly", "yes",
            "--dir", directory + "/redis", "--save", "", "--daemonize", "no", "--logfile", directory + "/redis.log",
        ], stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        defer { redis.kill() }
        try await Self.awaitPing(a, hosts.addressA, alive: { redis.isRunning })
        let load = try ChildProcess(executable: a[0], arguments: Array(a.dropFirst()) + [
            // Over loopback: connections to A's address could not be rebuilt on B, which lacks it.
            "/usr/bin/redis-benchmark", "-h", "127.0.0.1", "-p", "6379", "-t", "set,incr", "-c", "4", "-P", "1",
            "-r", "10000", "-d", "64", "-n", "100000000", "-l", "-q",
        ], stdin: .null, stdout: .null, stderr: .null)
        defer { load.kill() }
        let standbyLog = directory + "/standby.log"
        let standby = try ReplicateBenchmark.service(b + [mitosis, "standby", "--listen", "\(hosts.addressB):7400", "--images", images,
                                                          "--warm", "--pidns"], log: standbyLog)
        defer { standby.kill() }
        try await ReplicateBenchmark.awaitLog(standbyLog, "listening on", standby)
        let protect = try ReplicateBenchmark.service(a + [mitosis, "protect", "\(redis.pid)", "--standby", "\(hosts.addressB):7400",
                                                          "--interval", "\(interval)", "--data", directory + "/redis/appendonlydir"],
                                                     log: directory + "/protect.log")
        defer { protect.kill() }
        try await ReplicateBenchmark.awaitLog(standbyLog, "warm clone: husk of process", standby, timeout: .seconds(60))
        try await Task.sleep(for: .seconds(seconds))

        // Host A fails; the standby sees its primary go.
        protect.kill()
        redis.kill()
        load.kill()
        let deadline = ContinuousClock.now + .seconds(30)
        while !["disconnected", "connection ended"].contains(where: { ((try? String(contentsOfFile: standbyLog, encoding: .utf8)) ?? "").contains($0) }) {
            guard ContinuousClock.now < deadline else { throw ValidationError("the standby did not see its primary go (\(standbyLog))") }
            try await Task.sleep(for: .milliseconds(10))
        }
        let warm = try Self.promote(b + [mitosis, "promote", images, "--json"])
        guard warm["warm"] as? Bool == true, let hostPid = warm["host_pid"] as? Int else {
            throw ValidationError("the warm promotion restored cold: \(warm["cold_reason"] ?? "?")")
        }
        try await Self.awaitPing(b, hosts.addressB, alive: { true })
        try await Self.kill(Int32(hostPid))
        try await ReplicateBenchmark.awaitExit(standby)

        // The same epochs in a directory nobody serves: a cold restore of the same epoch.
        for command in [["/bin/mkdir", copy], ["/bin/cp", "-a", images + "/epochs", images + "/TERM", copy + "/"]] {
            guard ChildProcess.exitCode(of: try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()),
                                                             stdin: .null, stdout: .null, stderr: .null).wait()) == 0
            else { throw ValidationError("\(command.joined(separator: " ")) failed") }
        }
        let cold = try Self.promote(b + [mitosis, "promote", copy, "--json"])
        guard "\(cold["epoch"] ?? "")" == "\(warm["epoch"] ?? "-")", let pid = cold["pid"] as? Int else {
            throw ValidationError("the cold promotion brought back another epoch: \(cold)")
        }
        try await Self.awaitPing(b, hosts.addressB, alive: { true })
        try await Self.kill(Int32(pid))
        return (Promoted(json: warm), Promoted(json: cold))
    }

    static func promote(_ command: [String]) throws -> [String: Any] {
        let child = try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()), stdin: .null, stdout: .pipe, stderr: .pipe)
        let (output, errors) = child.readToEnd()
        child.wait()
        guard let json = try? JSONSerialization.jsonObject(with: Data(output)) as? [String: Any] else {
            throw ValidationError("\(command.joined(separator: " ")) failed: \(String(decoding: output + errors, as: UTF8.self))")
        }
        return json
    }

    static func awaitPing(_ host: [String], _ address: String, alive: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while (try? ReplicateBenchmark.output(host + ["/usr/bin/redis-cli", "-h", address, "-p", "6379", "ping"]))?.contains("PONG") != true {
            guard ContinuousClock.now < deadline, alive() else { throw ValidationError("redis does not answer on \(address)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Kills a process that is not our child and waits until it is gone.
    static func kill(_ pid: Int32) async throws {
        _ = try? Kernel.sendSignal(pid: pid, Kernel.killSignal)
        let deadline = ContinuousClock.now + .seconds(10)
        while FileManager.default.fileExists(atPath: "/proc/\(pid)") && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    }
}
