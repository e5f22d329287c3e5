import ArgumentParser
import Foundation
import Mitosis
import MitosisKernel
import MitosisReplication
import MitosisStacks
import Logging

/// Starts the bundled example target (`Examples/DemoTarget`), shows what Mitosis sees in it,
/// and stops it: the quickest way to see every part of Mitosis on a real process.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Mitosis on the bundled demo target: inspect, graph, stacks, checkpoints, restore, hot standby.")

    @Option(help: "The demo target executable (default: mitosis-demo-target next to mitosis).")
    var target: String?

    func run() async throws {
        let executable = target ?? URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0])
            .deletingLastPathComponent().appendingPathComponent("mitosis-demo-target").path
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            fail(ValidationError("demo target not found at \(executable) (build it with `swift build`)"))
        }
        let demo: LaunchedTarget
        do { demo = try LaunchedTarget(executable: executable) } catch { fail(error) }
        defer { demo.stop() }
        do {
            try await show(pid: demo.pid)
            let scenario = URL(fileURLWithPath: executable).deletingLastPathComponent().appendingPathComponent("mitosis-scenario").path
            try await showRestore(scenario: scenario)
            try await showStandby(scenario: scenario)
        } catch {
            fail(error)
        }
    }

    /// Checkpoints a self-checking process (the restore scenario of the test suite: patterned
    /// memory, worker and ticker threads, a signal handler, a log file, an eventfd, a pipe with
    /// unread bytes, an epoll), kills it with SIGKILL, restores it, and asks it to check itself.
    private func showRestore(scenario: String) async throws {
        heading("restore: a process killed with SIGKILL, brought back from its checkpoint")
        try await withSelfCheckingProcess(scenario, "restore") { original, directory, log in
            let image = directory + "/image"
            let result = try await withCheckpointSession(pid: original.pid) { session in
                try await session.checkpoint(to: DirectorySink(directory: image))
            }
            print(CheckpointSummary(result, path: image).text)
            original.kill()
            print("killed    \(original.pid) with SIGKILL")
            let restored = try await Restorer(image: CheckpointImage.open(image)).restore()
            defer {
                kill(restored.pid, SIGKILL)
                var status: Int32 = 0
                waitpid(restored.pid, &status, 0)
            }
            print("restored process \(restored.pid) (\(restored.threads) threads, \(restored.descriptors) descriptors) from \(image) in \(String(format: "%.1f", restored.restoreMilliseconds)) ms")
            kill(restored.pid, SIGUSR1)
            print("restored  \(restored.pid): \(try await checkLine(2, in: log))\n")
        }
    }

    /// Protects the same self-checking process onto a standby with a warm clone (in this
    /// process, on loopback; the clone in a new pid namespace, since the original holds the
    /// pid), kills the original and promotes the clone, which checks itself.
    private func showStandby(scenario: String) async throws {
        heading("hot standby: a process protected onto a standby, killed, and promoted there")
        try await withSelfCheckingProcess(scenario, "standby") { original, directory, log in
            var quiet = Logger(label: "mitosis.demo")
            quiet.logLevel = .error
            let port = Int(try Kernel.freeLoopbackPort())
            var standbyOptions = StandbyOptions(host: "127.0.0.1", port: port, directory: directory + "/standby")
            standbyOptions.warm = WarmOptions(pidNamespace: true)
            let standby = try await Standby(options: standbyOptions, logger: quiet)
            let serving = Task { try await standby.run() }
            defer { serving.cancel() }
            var protectOptions = ProtectOptions(host: "127.0.0.1", port: port)
            protectOptions.interval = .milliseconds(50)
            let session = ReplicationSession(pid: original.pid, options: protectOptions, logger: quiet)
            let protecting = Task { try await session.run() }
            defer { protecting.cancel() }

            // Until the warm clone holds a dozen epochs.
            var status = await standby.status()
            for _ in 0..<600 where (status.warm?.epoch?.rawValue ?? 0) < 12 {
                try await Task.sleep(for: .milliseconds(50))
                status = await standby.status()
            }
            guard let held = status.warm?.epoch, let husk = status.warm?.hostPid else {
                throw ValidationError("the standby built no warm clone: \(status.warm?.reason ?? status.reasons.joined(separator: "; "))")
            }
            let sent = session.statistics
            print("protected \(original.pid) every 50 ms: \(sent.epochs) epochs acknowledged, freeze p50 \(Self.format(ReplicationStatistics.percentile(sent.freezeMilliseconds, 50))) ms")
            print("standby   epoch \(status.statistics.committed?.epoch.description ?? "none") committed; warm clone: pid \(husk) here (\(original.pid) in its pid namespace), frozen, holds epoch \(held)")
            // The protect session traces the process: it sees the death and detaches; only then
            // can the original be reaped (`kill()` waits for that, off the cooperative pool).
            kill(original.pid, SIGKILL)
            print("killed    \(original.pid) with SIGKILL")
            _ = try? await protecting.value
            try await Blocking.run("mitosis-demo-reap") { original.kill() }
            let result = try await Promotion.promote(directory: standbyOptions.directory)
            let promoted = result.hostPid ?? result.pid
            defer { kill(promoted, SIGKILL) }
            print(PromoteCommand.line(result))
            kill(promoted, SIGUSR1)
            print("promoted  \(promoted): \(try await checkLine(2, in: log))\n")
        }
    }

    private static func format(_ value: Double?) -> String { value.map { String(format: "%.1f", $0) } ?? "-" }

    /// Runs `body` with a self-checking process (the restore scenario of the test suite) that
    /// has answered its first check, in a scratch directory removed afterwards.
    private func withSelfCheckingProcess(_ scenario: String, _ name: String,
                                         _ body: (LaunchedTarget, _ directory: String, _ log: String) async throws -> Void) async throws {
        guard FileManager.default.isExecutableFile(atPath: scenario) else {
            print("skipped: \(scenario) not found (swift build builds it)\n")
            return
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-demo-\(name)-\(UUID().uuidString)").path
        try DirectorySink.createDirectories(directory)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/self-check.log"
        let original = try LaunchedTarget(executable: scenario, arguments: ["restore", log, "16", "2", "60"])
        defer { original.kill() }
        try original.send("detach")
        _ = original.readLine()
        kill(original.pid, SIGUSR1)
        print("original  \(original.pid): \(try await checkLine(1, in: log))")
        try await body(original, directory, log)
    }

    /// The `n`th self-check line the restore scenario appends to its log (within 10 s).
    private func checkLine(_ n: Int, in log: String) async throws -> String {
        for _ in 0..<1000 {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("CHECK n=\(n) ") }) { return String(line) }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ValidationError("the self-checking process wrote no check \(n) to \(log)")
    }

    private func show(pid: Int32) async throws {
        heading("inspect \(pid): what /proc tells, without stopping it")
        print(InspectReport(try Introspector.inspect(pid: pid)).text)

        heading("graph \(pid): resources and how they depend on each other")
        let graph = try await ResourceGraph.snapshot(of: pid, options: GraphOptions(includeMappings: false), freeze: false)
        print(graph.text())
        let closure = graph.closure(of: pid)
        print("dependency closure: \(closure.processes.count) process(es), \(closure.resources.count) resources to capture, \(closure.external.count) external:")
        for resource in closure.external { print("  \(resource.id): \(resource.reason)") }
        print()

        heading("stacks \(pid): every thread, frozen for a moment")
        let clock = ContinuousClock()
        let start = clock.now
        let stacks = try await ProcessStacks.capture(pid: pid)
        let elapsed = clock.now - start
        print(stacks.text())
        print("(\(stacks.threads.count) threads unwound in \(elapsed.formatted(.units(allowed: [.milliseconds], fractionalPart: .show(length: 1)))), target thawed)\n")

        heading("checkpoints \(pid): a full one, then only the pages written since")
        let images = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-demo-\(pid)").path
        defer { try? FileManager.default.removeItem(atPath: images) }
        try DirectorySink.createDirectories(images)
        try await withCheckpointSession(pid: pid) { session in
            for number in 1...2 {
                if number > 1 { try await Task.sleep(for: .milliseconds(300)) }
                let sink = DirectorySink(directory: "\(images)/\(number)")
                let result = try await session.checkpoint(to: sink, parent: number == 1 ? nil : .previous(path: "../1"))
                print(CheckpointSummary(result, path: sink.path).text)
            }
        }
        print()

        heading("after: the target runs on, untraced")
        let after = try Introspector.inspect(pid: pid, detailedMemory: false)
        print("process \(pid): state \(after.identity.state), \(after.threads.count) threads, \(after.fds.count) descriptors")
    }

    private func heading(_ text: String) {
        print("== \(text)")
    }
}
