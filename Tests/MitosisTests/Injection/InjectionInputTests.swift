import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisStacks
@testable import MitosisTrace

/// F6 and F14: options that could make Mitosis allocate while the target is frozen are bounded,
/// and a process that asked not to be dumped is not dumped without `--force`.
@Suite("Option bounds and non-dumpable targets")
struct InjectionInputTests {
    @Test("stacks refuses unbounded --sample, --duration and --max-frames with one line",
          arguments: [["--sample", "1e-300", "--duration", "1"], ["--sample", "10", "--duration", "inf"],
                      ["--sample", "10", "--duration", "1e300"], ["--sample", "nan"], ["--max-frames", "1000000000"],
                      ["--max-frames", "100000000000"], ["--max-frames", "9223372036854775807"], ["--max-frames", "0"]])
    func stacksBounds(options: [String]) async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let run = try await ToolRun(ToolRun.mitosis, ["stacks", "\(child.pid)"] + options)
        #expect(run.status != 0)
        #expect(run.standardError.contains("must be"), "\(run.standardError)")
        #expect(run.standardError.split(separator: "\n").count <= 3, "\(run.standardError)")  // usage hint included
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("ping")
    }

    @Test("the library caps frames and refuses a sampling rate or duration out of range")
    func libraryBounds() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid, maxFrames: Int.max)
        #expect(stacks.threads.count == 1)
        await #expect(throws: MitosisError.self) {
            try await StackSampler.run(pid: child.pid, hertz: 1e-300, duration: .seconds(1))
        }
        await #expect(throws: MitosisError.self) {
            try await StackSampler.run(pid: child.pid, hertz: 10, duration: .seconds(Int64.max))
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
    }

    @Test("dump and track refuse a non-dumpable process and say why; --force dumps it")
    func nonDumpableRefused() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-undumpable-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Run as root, and as an unprivileged user (where /proc ownership tells, without a freeze).
        let asNobody = ["--reuid=65534", "--regid=65534", "--clear-groups", ScenarioProcess.executable("mitosis-scenario"), "undumpable"]
        for child in [try await ScenarioProcess("undumpable"), try await ScenarioProcess(asNobody[0], Array(asNobody.dropFirst()), executable: "/usr/bin/setpriv")] {
            defer { child.stop() }
            let before = try TargetHealth(pid: child.pid)
            for command in ["dump", "track"] {
                let refused = try await ToolRun(ToolRun.mitosis, [command, "\(child.pid)", "--images", directory + "/refused"])
                #expect(refused.status == 1)
                #expect(refused.standardError == "mitosis: \(MitosisError.notDumpable(child.pid))\n")
                #expect(!FileManager.default.fileExists(atPath: directory + "/refused/manifest.json"))
            }
            await #expect(try TargetHealth.runsFreely(child.pid))
            #expect(try TargetHealth(pid: child.pid) == before)
            let image = directory + "/forced-\(child.pid)"
            let forced = try await ToolRun(ToolRun.mitosis, ["dump", "\(child.pid)", "--images", image, "--force"])
            #expect(forced.status == 0, "\(forced.standardError)")
            #expect(FileManager.default.fileExists(atPath: image + "/manifest.json"))
            try await child.send("ping")
        }
        // A dumpable process is dumped as before.
        let plain = try await ScenarioProcess("idle")
        defer { plain.stop() }
        let dumped = try await ToolRun(ToolRun.mitosis, ["dump", "\(plain.pid)", "--images", directory + "/plain"])
        #expect(dumped.status == 0, "\(dumped.standardError)")
    }

    @Test("a library checkpoint session refuses a non-dumpable process unless told to copy it")
    func librarySessionRefusesNonDumpable() async throws {
        let child = try await ScenarioProcess("undumpable")
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let before = try TargetHealth(pid: child.pid)
        await #expect(throws: MitosisError.notDumpable(child.pid)) {
            _ = try await CheckpointSession(pid: child.pid, options: CheckpointOptions(strategy: .hash))
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        var options = CheckpointOptions(strategy: .hash)
        options.copyNonDumpable = true
        let result = try await withCheckpointSession(pid: child.pid, options: options) { session in
            try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/forced"))
        }
        #expect(result.manifest.pid == child.pid)
        try await child.send("ping")
    }
}
