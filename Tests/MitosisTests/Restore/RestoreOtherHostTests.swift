import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// Restore on another "host": a network namespace the test makes (`--netns`), whose clocks
/// differ from the checkpoint's (`--timens`). Docs/restore.md, *Another host* and *Time namespace*.
@Suite(.serialized) struct RestoreOtherHostTests {
    static let unshare = "/usr/bin/unshare"

    /// The acceptance program, checkpointed while it runs, killed, and restored by a
    /// `mitosis restore --netns HOST` that runs inside a time namespace whose clocks read an
    /// hour more than the checkpoint's host — as a second machine's would, booted an hour
    /// earlier. (A test cannot boot a machine; a time namespace around the restorer gives it
    /// exactly what another host gives: clocks unrelated to the image's.) The process gets a
    /// time namespace of its own whose clocks continue from the checkpoint's: its ticker
    /// (absolute `clock_nanosleep` on `CLOCK_MONOTONIC`) keeps ticking every 10 ms instead of
    /// finding every deadline an hour in the past, and its memory check passes.
    @Test func theAcceptanceProgramRunsOnInAnotherHostWhoseClockIsAnHourAhead() async throws {
        let hosts = try await NetworkHosts()
        do {
            try await acceptanceProgram(restoredIn: hosts)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
    }

    private func acceptanceProgram(restoredIn hosts: NetworkHosts) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/acceptance.log"
        let child = try await ScenarioProcess("acceptance", [log, "32", "4", "120", "\(RestoreAcceptanceTests.uid)"])
        defer { child.stop() }
        let pid = child.pid
        try await Task.sleep(for: .milliseconds(200))
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        try await child.send("detach")
        try await Task.sleep(for: .milliseconds(150))
        kill(pid, SIGUSR1)
        #expect(try await CheckpointedScenario.awaitCheck(2, in: log).contains(" PASS "))

        let session = try await CheckpointSession(pid: pid)
        let manifest: CheckpointManifest
        do {
            manifest = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/image")).manifest
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        child.stop()
        let clocks = try #require(manifest.restore?.clocks)
        let ownMonotonic = try Kernel.clockNow(ClockID.monotonic)
        // Read by the process itself, in the same (root) time namespace as this test.
        #expect(abs(ownMonotonic.totalNanoseconds - clocks.monotonic.totalNanoseconds) < 30_000_000_000)

        // A namespace that does not exist, and a file that is not a network namespace: one
        // line each, nothing created.
        for (given, expected) in [("mitosis-no-such-host", "network namespace mitosis-no-such-host does not exist: no /run/netns/mitosis-no-such-host"),
                                  (scratch.path + "/acceptance.log", "is not a network namespace file")] {
            let refused = try await ToolRun(ToolRun.mitosis, ["restore", scratch.path + "/image", "--netns", given])
            #expect(refused.status == 1)
            #expect(refused.standardError.hasPrefix("mitosis: ") && refused.standardError.contains(expected)
                    && refused.standardError.split(separator: "\n").count == 1, "\(refused.standardError)")
            #expect(kill(pid, 0) == -1 && errno == ESRCH)
        }

        let restore = try await ToolRun(ToolRun.mitosis, ["restore", scratch.path + "/image", "--netns", hosts.b],
                                        prefix: [Self.unshare, "--time", "--monotonic", "3600", "--boottime", "3600"])
        defer { kill(pid, SIGKILL) }
        #expect(restore.status == 0, "\(restore.standardError)")
        #expect(restore.standardOutput.contains("in network namespace \(hosts.b)"), "\(restore.standardOutput)")
        #expect(restore.standardOutput.contains("in a time namespace of its own"), "\(restore.standardOutput)")

        // In host b's network namespace, and in a time namespace that is neither this test's
        // nor the restorer's.
        #expect(try Kernel.readLink("/proc/\(pid)/ns/net") == (try await hosts.namespaceLink(hosts.b)))
        #expect(try Kernel.readLink("/proc/\(pid)/ns/time") != (try Kernel.readLink("/proc/self/ns/time")))
        // Its monotonic clock continues from the checkpoint's (time stood still while it was
        // down), where the restorer's read an hour more.
        let offsets = try #require(TimeNamespaceOffsets(parsing: String(decoding: try Kernel.readFile("/proc/\(pid)/timens_offsets"), as: UTF8.self)))
        let own = try Kernel.childTimeNamespaceOffsets()
        let theirs = try Kernel.clockNow(ClockID.monotonic).totalNanoseconds - own.monotonic.totalNanoseconds + offsets.monotonic.totalNanoseconds
        let sinceCheckpoint = Double(theirs - clocks.monotonic.totalNanoseconds) / 1e9
        #expect((0..<20).contains(sinceCheckpoint), "its clock reads \(sinceCheckpoint) s past the checkpoint's")
        let boottime = try Kernel.clockNow(ClockID.boottime).totalNanoseconds - own.boottime.totalNanoseconds + offsets.boottime.totalNanoseconds
        #expect((0..<20).contains(Double(boottime - clocks.boottime.totalNanoseconds) / 1e9))

        // From inside: memory, ticker, workers and timers, twice, 300 ms apart.
        try await Task.sleep(for: .milliseconds(150))
        kill(pid, SIGUSR1)
        let first = try await CheckpointedScenario.awaitCheck(3, in: log)
        #expect(first.contains(" PASS "), "\(first)")
        try await Task.sleep(for: .milliseconds(300))
        kill(pid, SIGUSR1)
        let second = try await CheckpointedScenario.awaitCheck(4, in: log)
        #expect(second.contains(" PASS "), "\(second)")
        let ticks = [first, second].map { Int(CheckpointedScenario.value("ticks", in: $0) ?? "") ?? -1 }
        #expect(ticks[1] >= ticks[0] + 15, "the ticker ticks every 10 ms: \(ticks)")
        let gap = Int(CheckpointedScenario.value("gap_ms", in: second) ?? "") ?? -1
        #expect((0..<200).contains(gap), "longest gap between ticks after the restore: \(gap) ms")
    }

    /// `auto` turns the time namespace on only where the clocks would jump: the same image
    /// restored by a restorer in the checkpoint's own clocks gets none.
    @Test func sameClocksGetNoTimeNamespace() throws {
        var clocks = RestoreRecord.Clocks(monotonic: try Kernel.clockNow(ClockID.monotonic), boottime: try Kernel.clockNow(ClockID.boottime),
                                          realtime: try Kernel.clockNow(ClockID.realtime))
        var record = RestoreRecord(bounds: .init(startCode: 0, endCode: 0, startData: 0, endData: 0, startBrk: 0, brk: 0, startStack: 0,
                                                 argStart: 0, argEnd: 0, envStart: 0, envEnd: 0),
                                   auxv: [], executable: "/bin/true", vdso: .init(vvar: .init(start: 0, length: 0), vvarVclock: nil,
                                                                                  vdso: .init(start: 0, length: 0), xxh64: ""),
                                   signalActions: [], threads: [], mappingFlags: [], posixTimers: 0)
        record.clocks = clocks
        #expect(try HuskPlacementPlan.clocks(record, choice: .auto).0 == nil)
        #expect(try HuskPlacementPlan.clocks(record, choice: .on).0 == clocks)
        #expect(try HuskPlacementPlan.clocks(record, choice: .off).0 == nil)
        // Taken 10 s earlier by the real clock, but the monotonic clock says an hour: another host.
        clocks.realtime.seconds -= 10
        clocks.monotonic.seconds -= 3600
        record.clocks = clocks
        let (chosen, jump) = try HuskPlacementPlan.clocks(record, choice: .auto)
        #expect(chosen == clocks)
        #expect(abs(jump.components.seconds - 3590) <= 1)
        // Hostile values are refused by name.
        clocks.boottime.seconds = -5
        #expect(clocks.problem == "its boottime clock -5 s \(clocks.boottime.nanoseconds) ns is not a time the kernel can show")
        #expect(TimeNamespaceOffsets(parsing: "monotonic 3600 0\nboottime -7 5\n") == TimeNamespaceOffsets(
            monotonic: TimeSpec(seconds: 3600, nanoseconds: 0), boottime: TimeSpec(seconds: -7, nanoseconds: 5)))
        #expect(TimeNamespaceOffsets(parsing: "monotonic x 0\n") == nil)
        #expect(TimeSpec(totalNanoseconds: -1_500_000_000) == TimeSpec(seconds: -2, nanoseconds: 500_000_000))
    }
}
