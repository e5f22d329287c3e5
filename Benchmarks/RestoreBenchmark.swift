import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Restore time of the self-checking `acceptance` scenario (threads, POSIX timers, an itimer,
/// patterned memory), small and large, each beside the time to fill the same amount of fresh
/// memory with `UFFDIO_COPY` in this process (the practical floor of any restore: page
/// allocation and copying). Both are the best of `--runs`, measured in the same run; every
/// restored process must pass its self-check.
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
        print("CRIU: " + Self.criuColumn())
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
        }
    }

    /// Why the CRIU column is empty: it needs a `criu` of version 4.0 or newer ($CRIU, else PATH).
    static func criuColumn() -> String {
        let environment = ProcessInfo.processInfo.environment
        let candidates = [environment["CRIU"]].compactMap { $0 }
            + (environment["PATH"] ?? "").split(separator: ":").map { $0 + "/criu" }
        guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return "column skipped: no criu binary on PATH or in $CRIU"
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--version"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        guard (try? process.run()) != nil else { return "column skipped: \(path) does not run" }
        process.waitUntilExit()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        // "Version: 4.2" (a "GitID:" line may follow).
        let version = text.split(separator: "\n").first { $0.hasPrefix("Version:") }.map { $0.dropFirst(8).trimmingCharacters(in: .whitespaces) } ?? "?"
        guard let major = Int(version.split(separator: ".").first ?? ""), major >= 4 else {
            return "column skipped: \(path) is version \(version), older than 4.0 (Debian's 3.17 does not start on this kernel)"
        }
        return "column skipped: \(path) (version \(version)) found, but the side-by-side CRIU restore is not written yet"
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
