import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Restore time of the self-checking `restore` scenario, small and large, each beside the time
/// to fill the same amount of fresh memory with `UFFDIO_COPY` in this process (the practical
/// floor of any restore: page allocation). Every restored process must pass its self-check.
///
/// Needs the scenario program: `swift build -c release --product mitosis-scenario` first.
struct RestoreBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restore",
                                                    abstract: "Restore time of a small and a large image beside the UFFDIO_COPY fill floor.")

    @Option(help: "Sizes of the scenario's patterned memory, in MiB.") var mib: [Int] = [16, 1024]
    @Option(help: "Restores per size (the best one is reported).") var runs = 3
    @Option(help: "Where images are written (removed afterwards).") var scratch = NSTemporaryDirectory()

    func run() async throws {
        let directory = scratch + "/mitosis-bench-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        print("CRIU: " + (Self.criuPath.map { "found at \($0), not compared yet" } ?? "no criu binary on PATH, column skipped"))
        for size in mib {
            let log = directory + "/scenario-\(size).log"
            let target = try ScenarioTarget(["restore", log, "\(size)", "2", "600"])
            try target.send("detach")
            let pid = target.pid
            let session = try await CheckpointSession(pid: pid)
            let image = directory + "/image-\(size)"
            let checkpoint = try await session.checkpoint(to: DirectorySink(directory: image))
            try await session.killTarget()
            target.stop()
            try await Self.awaitGone(pid)
            // Each restored copy continues the log at its recorded offset: put the log back as it
            // was at the checkpoint before each restore.
            let logAtCheckpoint = try Data(contentsOf: URL(fileURLWithPath: log))
            let restorer = try Restorer(image: CheckpointImage.open(image))
            var best: RestoreResult?
            for _ in 0..<runs {
                let result = try await restorer.restore()
                kill(pid, SIGUSR1)
                let checked = try await Self.awaitCheck(in: log)
                kill(pid, SIGKILL)
                Kernel.reap(pid)
                guard checked.contains(" PASS ") else { throw ValidationError("restored process failed its check: \(checked)") }
                try logAtCheckpoint.write(to: URL(fileURLWithPath: log))
                if best == nil || result.restoreMilliseconds < best!.restoreMilliseconds { best = result }
            }
            let bytes = checkpoint.manifest.stats.bytesWritten
            let floor = try Self.fillFloor(bytes: Int(bytes))
            let result = best!
            let phases = ["husk", "empty", "memory", "state", "resume"].map { String(format: "%@ %.1f", $0, result.phases[$0] ?? 0) }
            print("""
                \(size) MiB scenario (\(result.threads) threads, \(result.descriptors) descriptors, \(String(format: "%.1f", Double(bytes) / 1048576)) MiB stored):
                   restore:                 \(String(format: "%.1f ms", result.restoreMilliseconds)) (best of \(runs); \(phases.joined(separator: ", ")) ms)
                   UFFDIO_COPY fill floor:  \(String(format: "%.1f ms", floor)); restore / floor = \(String(format: "%.2f", result.restoreMilliseconds / floor))
                """)
        }
    }

    static var criuPath: String? {
        ["/usr/sbin/criu", "/usr/local/sbin/criu", "/usr/bin/criu", "/usr/local/bin/criu"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Milliseconds to fill `bytes` of fresh anonymous memory of this process with UFFDIO_COPY.
    static func fillFloor(bytes: Int) throws -> Double {
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { source.deallocate() }
        for index in stride(from: 0, to: bytes, by: 8) { source.storeBytes(of: UInt64(index) &* 0x9e37_79b9, toByteOffset: index, as: UInt64.self) }
        let target = try Kernel.mapAnonymous(length: bytes)
        defer { Kernel.unmap(target, length: bytes) }
        let uffd = try Kernel.userfaultfd(flags: O_CLOEXEC)
        defer { try? uffd.close() }
        try Userfaultfd(descriptor: uffd).enable([])
        let clock = ContinuousClock()
        let start = clock.now
        try Kernel.fillByUserfaultfd(uffd, address: UInt64(UInt(bitPattern: target)), from: UnsafeRawBufferPointer(source))
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
