import Foundation
import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisImage
@testable import MitosisReplication

/// A long-running `mitosis` command (standby, protect) started in a test host, its stdout and
/// stderr appended to a log file the test reads.
final class ServiceProcess: @unchecked Sendable {
    let child: ChildProcess
    let log: String

    init(_ arguments: [String], in prefix: [String], log: String) throws {
        self.log = log
        // sh appends both streams to the log, then execs `ip netns exec … mitosis …`: one pid throughout.
        let command = ["/bin/sh", "-c", "exec \"$@\" >>\"$0\" 2>&1", log] + prefix + [ToolRun.mitosis] + arguments
        child = try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()), stdin: .null, stdout: .null, stderr: .null)
    }

    var pid: Int32 { child.pid }
    /// How many connections a standby has seen end (its log says so once each).
    var connectionsEnded: Int { text.components(separatedBy: " disconnected").count + text.components(separatedBy: " connection ended").count - 2 }

    /// Waits (20 s at most) until a connection ended after the `ended` seen before: a standby
    /// whose primary died has then committed or abandoned the epoch in flight, so its newest
    /// epoch is final.
    func awaitConnectionEnded(since ended: Int) async {
        let deadline = ContinuousClock.now + .seconds(20)
        while connectionsEnded == ended && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
    }
    var text: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Waits until the log holds a line containing `needle`.
    func awaitLog(_ needle: String, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !text.contains(needle) {
            guard ContinuousClock.now < deadline, child.isRunning else {
                throw HarnessError("no '\(needle)' in the log of \(pid) (\(child.isRunning ? "running" : "exited")):\n\(text.suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Sends `signal` and waits for the exit; returns the exit code (128 + signal when killed).
    @discardableResult
    func stop(_ signal: Int32 = SIGTERM, timeout: Duration = .seconds(20)) async -> Int32 {
        child.signal(signal)
        let deadline = ContinuousClock.now + timeout
        while child.isRunning {
            if ContinuousClock.now >= deadline { child.signal(SIGKILL) }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return ChildProcess.exitCode(of: child.wait())
    }

    deinit { child.kill() }
}

enum StandbyImages {
    /// The newest committed epoch of a standby directory, read as `promote` would.
    static func newest(_ directory: String) -> (epoch: Epoch, image: CheckpointImage)? {
        StandbyDirectory(directory).scan().newest
    }

    /// Waits until the standby directory's newest committed epoch is at least `epoch`.
    static func awaitEpoch(_ directory: String, atLeast epoch: UInt64, timeout: Duration = .seconds(30)) async throws -> Epoch {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let newest = newest(directory), newest.epoch.rawValue >= epoch { return newest.epoch }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw HarnessError("\(directory) did not reach epoch \(epoch) (newest: \(newest(directory)?.epoch.description ?? "none"))")
    }

    /// The pages the image's chain holds bytes for (all but `clean_file`) whose bytes differ
    /// from the process's now, each thread's rseq area left out: the kernel writes the cpu id
    /// there whenever the thread returns to user space, running or not, and restore registers
    /// it afresh.
    static func differingPages(_ image: CheckpointImage, pid: Int32) throws -> (compared: Int, pages: [UInt64]) {
        let chain = try image.chain()
        let snapshot = try MemorySnapshot.take(pid: pid, manifest: image.manifest)
        let rseq = image.manifest.threads.compactMap(\.rseq).map { ($0.address, $0.address + UInt64($0.size)) }
        var differing: [UInt64] = []
        for (page, live) in snapshot {
            var stored = try chain.read(address: page, length: live.count)
            var current = live
            for (start, end) in rseq where start < page + UInt64(live.count) && end > page {
                for address in max(start, page)..<min(end, page + UInt64(live.count)) {
                    stored[Int(address - page)] = 0
                    current[Int(address - page)] = 0
                }
            }
            if stored != current { differing.append(page) }
        }
        return (snapshot.count, differing.sorted())
    }

    /// Names under `epochs/` that are work in progress (hidden).
    static func hiddenEntries(_ directory: String) -> [String] {
        ((try? Kernel.listDirectory(directory + "/epochs")) ?? []).filter { $0.hasPrefix(".") }
    }
}
