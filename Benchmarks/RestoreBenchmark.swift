import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Restore time of the self-checking `acceptance` scenario (threads, POSIX timers, an itimer,
/// patterned memory), small and large, each beside the time to fill the same amount of fresh
/// memory with `UFFDIO_COPY` in this process (the practical floor of any restore: page
/// allocation and copying), and beside CRIU's restore of a second copy of the same scenario when
/// a CRIU 4.x binary is available. All are the best of `--runs`, measured in the same run; every
/// restored process must pass its self-check (CRIU's check result is printed).
///
/// Needs the scenario program: `swift build -c release --product mitosis-scenario` first.
struct RestoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore",
                                                    abstract: "Restore time of a small and a large image beside the UFFDIO_COPY fill floor.")

    @Option(help: "Sizes of the scenario's patterned memory, in MiB.") var mib: [Int] = [16, 1024]
    @Option(help: "Restores (and floor fills) per size; the best one is reported.") var runs = 3
    @Option(help: "Where images are written (removed afterwards).") var scratch = NSTemporaryDirectory()

    func run() async throws {
        let directory = scratch + "/mitosis-bench-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (criu, criuNote) = Self.findCriu()
        print("CRIU: " + criuNote)
        for size in mib {
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
            var best: RestoreResult?
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
                if best == nil || result.restoreMilliseconds < best!.restoreMilliseconds { best = result }
            }
            let bytes = Int(checkpoint.manifest.stats.bytesWritten)
            let floor = try (0..<runs).map { _ in try Self.fillFloor(bytes: bytes) }.min()!
            let result = best!
            let memory = result.phases["memory"] ?? 0
            let phases = ["husk", "empty", "memory", "state", "resume"].map { String(format: "%@ %.1f", $0, result.phases[$0] ?? 0) }
            print("""
                \(size) MiB scenario (\(result.threads) threads, \(result.descriptors) descriptors, \(String(format: "%.1f", Double(bytes) / 1048576)) MiB stored):
                   restore:                 \(String(format: "%.1f ms", result.restoreMilliseconds)) (best of \(runs); \(phases.joined(separator: ", ")) ms)
                   UFFDIO_COPY fill floor:  \(String(format: "%.1f ms", floor)) (best of \(runs)); restore / floor = \(String(format: "%.2f", result.restoreMilliseconds / floor)), memory phase / floor = \(String(format: "%.2f", memory / floor))
                """)
            if let criu {
                do {
                    let (milliseconds, check) = try await Self.criuRestore(criu, size: size, runs: runs, directory: directory)
                    print(String(format: "   CRIU restore -d:         %.1f ms (best of %d, wall time of the criu process; %@); mitosis / criu = %.2f",
                                 milliseconds, runs, check, result.restoreMilliseconds / milliseconds))
                } catch {
                    print("   CRIU restore -d:         failed: \(error)")
                }
            }
        }
    }

    /// The `criu` of version 4.0 or newer ($CRIU, else PATH) and a line about it; nil with the
    /// reason the CRIU column is skipped.
    static func findCriu() -> (String?, String) {
        let environment = ProcessInfo.processInfo.environment
        let candidates = [environment["CRIU"]].compactMap { $0 }
            + (environment["PATH"] ?? "").split(separator: ":").map { $0 + "/criu" }
        guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return (nil, "column skipped: no criu binary on PATH or in $CRIU")
        }
        guard let output = try? ToolOutput.capture(path, ["--version"]) else { return (nil, "column skipped: \(path) does not run") }
        let text = String(decoding: output, as: UTF8.self)
        // "Version: 4.2" (a "GitID:" line may follow).
        let version = text.split(separator: "\n").first { $0.hasPrefix("Version:") }.map { $0.dropFirst(8).trimmingCharacters(in: .whitespaces) } ?? "?"
        guard let major = Int(version.split(separator: ".").first ?? ""), major >= 4 else {
            return (nil, "column skipped: \(path) is version \(version), older than 4.0 (Debian's 3.17 does not start on this kernel)")
        }
        return (path, "\(path) version \(version): dumps a second copy of the same scenario, restores it with `criu restore -d`")
    }

    /// CRIU's side of the same scenario: a second copy started alike, dumped by `criu dump`
    /// (which kills it), restored `runs` times by `criu restore -d`; returns the best wall time of
    /// the restoring criu process and the restored process's last check line.
    static func criuRestore(_ criu: String, size: Int, runs: Int, directory: String) async throws -> (Double, String) {
        let log = directory + "/criu-scenario-\(size).log"
        let images = directory + "/criu-\(size)"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        let target = try ScenarioTarget(["acceptance", log, "\(size)", "2", "600"])
        try target.send("detach")
        let pid = target.pid
        _ = try TimedRun.run(criu, ["dump", "-t", "\(pid)", "--shell-job", "-D", images, "-o", "dump.log"])
        target.stop()
        try await awaitGone(pid)
        guard !FileManager.default.fileExists(atPath: "/proc/\(pid)") else { throw ValidationError("criu dump left the scenario running (see \(images)/dump.log)") }
        // CRIU checks the log's size on restore: put it back as it was before each restore.
        let logAtDump = try Data(contentsOf: URL(fileURLWithPath: log))
        var best = Double.infinity, check = ""
        for _ in 0..<runs {
            let run = try TimedRun.run(criu, ["restore", "-d", "--shell-job", "-D", images, "-o", "restore.log"])
            guard FileManager.default.fileExists(atPath: "/proc/\(pid)") else { throw ValidationError("criu restore failed (see \(images)/restore.log)") }
            try await Task.sleep(for: .milliseconds(150))
            kill(pid, SIGUSR1)
            check = (try? await awaitCheck(in: log)) ?? "no check answered"
            kill(pid, SIGKILL)
            try await awaitGone(pid)
            try logAtDump.write(to: URL(fileURLWithPath: log))
            best = min(best, Samples.milliseconds(run.wall))
        }
        return (best, check.contains(" PASS ") ? "restored process passed its check" : "restored process: \(check)")
    }

    /// Milliseconds to fill `bytes` of fresh anonymous memory of this process with UFFDIO_COPY
    /// from an already-present source: what page allocation and copying alone cost.
    static func fillFloor(bytes: Int) throws -> Double {
        let source = try Kernel.mapAnonymous(length: bytes)
        defer { Kernel.unmap(source, length: bytes) }
        for index in stride(from: 0, to: bytes, by: 8) { source.storeBytes(of: UInt64(index) &* 0x9e37_79b9, toByteOffset: index, as: UInt64.self) }
        let target = try Kernel.mapAnonymous(length: bytes)
        defer { Kernel.unmap(target, length: bytes) }
        let uffd = try Kernel.userfaultfd(flags: O_CLOEXEC)
        defer { try? uffd.close() }
        try Userfaultfd(descriptor: uffd).enable([])
        let clock = ContinuousClock()
        let start = clock.now
        try Kernel.fillByUserfaultfd(uffd, address: UInt64(UInt(bitPattern: target)), from: UnsafeRawBufferPointer(start: source, count: bytes))
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
