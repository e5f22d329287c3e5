import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// Issue 11's acceptance program (`Tests/Scenario/scenario_acceptance.c`): a multi-threaded,
/// self-checking process with POSIX timers, an itimer, a ticker, a handler on an alternate
/// stack, its own session, other credentials, and patterned memory — checkpointed while it
/// runs, killed with SIGKILL, restored, and checked from the inside and the outside.
@Suite(.serialized) struct RestoreAcceptanceTests {
    static let uid: UInt32 = 4242

    @Test func theAcceptanceProgramPassesItsChecksAfterSigkillAndRestore() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/acceptance.log"
        let child = try await ScenarioProcess("acceptance", [log, "64", "4", "120", "\(Self.uid)"])
        defer { child.stop() }
        let pid = child.pid
        let worker0 = Int32(try child.intFact("worker0")), worker1 = Int32(try child.intFact("worker1"))
        try await Task.sleep(for: .milliseconds(200))
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        try await child.send("detach")
        // Checks are 100 ms or more apart: each asks whether every timer (the slowest fires
        // every 50 ms) fired since the previous one.
        try await Task.sleep(for: .milliseconds(150))
        kill(pid, SIGUSR1)
        let before = try await CheckpointedScenario.awaitCheck(2, in: log)
        #expect(before.contains(" PASS "), "\(before)")

        // Checkpointed while every thread and timer runs.
        let session = try await CheckpointSession(pid: pid)
        let manifest: CheckpointManifest
        do {
            manifest = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/image")).manifest
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        let state = try #require(manifest.restore?.processState)
        #expect(state.posixTimers.map(\.id) == [0, 2])
        #expect(state.posixTimers.map(\.notify) == [0, 4] && state.posixTimers[1].notifyTarget == worker0)
        #expect(state.intervalTimers.map(\.which) == [0] && state.intervalTimers[0].value.intervalNanoseconds == 30_000_000)
        #expect(state.personality == 0x0040000 && state.thpDisable == 1 && state.noNewPrivileges && state.dumpable == 1)
        #expect(state.threads.first { $0.tid == pid }?.timerSlack == 123_456)
        #expect(state.threads.first { $0.tid == pid }?.alternateSignalStack.size == 64 * 1024)
        let tids = manifest.threads.map(\.tid).sorted()
        #expect(tids.count == 6)
        child.stop()
        #expect(kill(pid, 0) == -1 && errno == ESRCH)

        let restorer = try Restorer(image: CheckpointImage.open(scratch.path + "/image"))
        #expect(restorer.refusals().isEmpty, "\(restorer.refusals())")
        let chain = restorer.chain
        let result = try await restorer.restore(verify: { pid in
            // Before any thread runs: byte-exact memory, the image's mappings and descriptors.
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ, first 0x\(String(pages[0], radix: 16))") }
            let maps = try RestoreVerification.mappingDifferences(pid: pid, manifest: manifest)
            guard maps.isEmpty else { throw RestoreFailure(description: maps.joined(separator: "; ")) }
            let fds = try Self.descriptorDifferences(pid: pid, manifest: manifest)
            guard fds.isEmpty else { throw RestoreFailure(description: fds.joined(separator: "; ")) }
        })
        defer { endRestored(pid) }
        #expect(result.pid == pid && result.threads == 6 && result.notes.isEmpty, "\(result.notes)")

        // From outside: same tids, untraced, its session and group, per-thread scheduling,
        // timers with their ids and targets, credentials.
        #expect(try Kernel.listDirectory("/proc/\(pid)/task").compactMap { Int32($0) }.sorted() == tids)
        #expect(try TargetHealth.tracer(of: pid) == 0)
        let stat = try Self.statFields("/proc/\(pid)/stat")
        #expect(stat[2] == "\(pid)" && stat[3] == "\(pid)", "pgrp \(stat[2]), session \(stat[3])")
        #expect(try Self.statFields("/proc/\(pid)/task/\(worker0)/stat")[16] == "5", "worker 0's nice")
        #expect(try Self.statFields("/proc/\(pid)/task/\(worker1)/stat")[38] == "3", "worker 1's policy (SCHED_BATCH)")
        let timers = ProcTimers.parse(String(decoding: try Kernel.readFile("/proc/\(pid)/timers"), as: UTF8.self)) ?? []
        #expect(timers.map(\.id) == [0, 2] && timers.map(\.sigevValue) == [0xfeed, 0xfeed] && timers[1].notifyTarget == worker0)
        let status = ProcStatus(parsing: String(decoding: try Kernel.readFile("/proc/\(pid)/status"), as: UTF8.self))
        #expect(status.credentials("Uid") == Credentials(real: Self.uid, effective: Self.uid, saved: Self.uid, filesystem: Self.uid))
        #expect(status.credentials("Gid") == Credentials(real: Self.uid, effective: Self.uid, saved: Self.uid, filesystem: Self.uid))
        #expect(status.groups == [Self.uid + 1, Self.uid + 2])
        #expect(status["NoNewPrivs"] == "1" && status["THP_enabled"] == "0" && status["CapEff"] == "0000000000000000")
        #expect(String(decoding: try Kernel.readFile("/proc/\(pid)/personality"), as: UTF8.self) == "00040000\n")

        // From inside: its memory, ticker, workers, three timers and the handler on its stack
        // (checked once its threads had 150 ms to run).
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
        #expect(CheckpointedScenario.value("handled", in: second) == "3")
        // The log was appended to, never overwritten: START, the harness check's line is absent
        // (it answered on stdin), then checks 2, 3 and 4.
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        #expect(lines.map { $0.split(separator: " ").prefix(2).joined(separator: " ") } == ["START", "CHECK n=2", "CHECK n=3", "CHECK n=4"])
    }

    /// ZDTM's "fds compare": number, kind, target, flags and offset of every descriptor.
    static func descriptorDifferences(pid: Int32, manifest: CheckpointManifest) throws -> [String] {
        let live = try Introspector.inspect(pid: pid, detailedMemory: false).fds
        func key(_ d: OpenDescriptor) -> String { "fd \(d.fd) \(d.kind.rawValue) \(d.target) flags 0\(String(d.flags, radix: 8)) pos \(d.position)" }
        let expected = (manifest.descriptors ?? []).map(key), actual = live.map(key)
        return expected.filter { !actual.contains($0) }.map { "image has \($0)" } + actual.filter { !expected.contains($0) }.map { "process has \($0)" }
    }

    /// The fields of a `stat` line after the command name: [0] is the state (field 3).
    static func statFields(_ path: String) throws -> [String] {
        let text = String(decoding: try Kernel.readFile(path), as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return [] }
        return text[text.index(after: close)...].split(separator: " ").map(String.init)
    }

    @Test func procTimersParsesEntriesAndRefusesMalformedOnes() {
        let text = "ID: 2\nsignal: 35/000000000000feed\nnotify: signal/tid.812\nClockID: 1\nID: 0\nsignal: 14/0000000000000000\nnotify: none/pid.800\nClockID: 0\n"
        #expect(ProcTimers.parse(text) == [
            .init(id: 0, signal: 14, sigevValue: 0, notify: 1, notifyTarget: 800, clock: 0),
            .init(id: 2, signal: 35, sigevValue: 0xfeed, notify: 4, notifyTarget: 812, clock: 1),
        ])
        #expect(ProcTimers.parse("") == [])
        #expect(ProcTimers.parse("ID: 1\nsignal: 14/0\nnotify: signal/pid.5\n") == nil, "no ClockID")
        #expect(ProcTimers.parse("ID: 1\nsignal: 14/0\nnotify: bogus/pid.5\nClockID: 0\n") == nil)
        #expect(ProcTimers.parse("ID: 1\nsignal: 14/zz\nnotify: signal/pid.5\nClockID: 0\n") == nil)
        #expect(ProcTimers.parse("ID: 1\nID: 2\nsignal: 14/0\nnotify: signal/pid.5\nClockID: 0\n") == nil)
        #expect(ProcTimers.parse("ID: 1\nsignal: 14/0\nsignal: 15/0\nnotify: signal/pid.5\nClockID: 0\n") == nil)
        #expect(ProcTimers.parse("garbage") == nil)
    }

    @Test func aProcessStateStepFailingKillsTheHuskAndIsNamed() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/acceptance.log"
        let child = try await ScenarioProcess("acceptance", [log, "4", "2", "120"])
        defer { child.stop() }
        let pid = child.pid
        try await child.send("detach")
        let image = scratch.path + "/image"
        let session = try await CheckpointSession(pid: pid)
        do { _ = try await session.checkpoint(to: DirectorySink(directory: image)) } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        child.stop()
        // A clock no kernel has: timer_create fails after memory, descriptors and threads exist.
        let manifestPath = image + "/manifest.json"
        var manifest = try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: manifestPath)))
        manifest.restore?.processState?.posixTimers[0].clock = 99
        try JSONOutput.encoder().encode(manifest).write(to: URL(fileURLWithPath: manifestPath))
        try Synthetic.resign(image)
        let run = try await ToolRun(ToolRun.mitosis, ["restore", image])
        #expect(run.status == 1)
        #expect(run.standardError == "mitosis: restore failed while creating POSIX timer 0 (clock 99): Invalid argument; the half-built process was killed\n",
                "\(run.standardError)")
        let deadline = ContinuousClock.now + .seconds(5)
        while kill(pid, 0) == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "no husk is left")
    }
}
