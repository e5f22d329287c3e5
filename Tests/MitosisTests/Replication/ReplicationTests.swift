import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisReplication

/// Replication between two test hosts (network namespaces): the `restore` scenario (the
/// self-checking multi-threaded program restore supports today) protected from host A onto a
/// standby in host B. Redis needs TCP socket restore, not there yet: the harness (hosts,
/// services, pauses) is the one its test will use.
@Suite(.serialized) struct ReplicationTests {
    static let port = 7400

    /// Runs `body` with two fresh hosts, removed afterwards whatever happens.
    func withHosts(_ body: (NetworkHosts) async throws -> Void) async throws {
        let hosts = try await NetworkHosts()
        do {
            try await body(hosts)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
        #expect(!NetworkHosts.exists(hosts.a) && !NetworkHosts.exists(hosts.b))
    }

    /// Starts the `restore` scenario in host A, detached, after its first self-check.
    func startScenario(_ hosts: NetworkHosts, _ scratch: ScratchDirectory, mib: Int) async throws -> (ScenarioProcess, String) {
        let log = scratch.path + "/scenario.log"
        let child = try await ScenarioProcess("restore", [log, "\(mib)", "2", "120"], prefix: hosts.prefix(hosts.a))
        try await child.send("detach")
        kill(child.pid, SIGUSR1)
        _ = try await CheckpointedScenario.awaitCheck(1, in: log)
        return (child, log)
    }

    func protect(_ pid: Int32, _ hosts: NetworkHosts, _ scratch: ScratchDirectory, interval: Int, name: String) throws -> ServiceProcess {
        try ServiceProcess(["protect", "\(pid)", "--standby", "\(hosts.addressB):\(Self.port)", "--interval", "\(interval)"],
                           in: hosts.prefix(hosts.a), log: scratch.path + "/\(name).log")
    }

    func standby(_ hosts: NetworkHosts, _ scratch: ScratchDirectory, images: String, name: String, compactEvery: Int = 16) throws -> ServiceProcess {
        try ServiceProcess(["standby", "--listen", "\(hosts.addressB):\(Self.port)", "--images", images, "--compact-every", "\(compactEvery)"],
                           in: hosts.prefix(hosts.b), log: scratch.path + "/\(name).log")
    }

    /// The epoch of the first base a standby's log says it swapped in.
    static func compactedEpoch(_ log: String) -> Epoch? {
        guard let range = log.range(of: "compacted the chain into a full base at epoch ") else { return nil }
        return UInt64(log[range.upperBound...].prefix { $0.isNumber }).map { Epoch($0) }
    }

    @Test("a standby's background compaction runs at nice 19, as do the threads it starts, and leaves the caller's priority as it was")
    func backgroundWorkRunsAtTheLowestPriority() async throws {
        final class Observed: @unchecked Sendable { var nice: Int32? }
        let callerBefore = try Kernel.scheduling(Kernel.currentThreadID())
        let (own, started) = try await StandbyStore.runInBackground("test-background") { () throws -> (Scheduling, Int32?) in
            let own = try Kernel.scheduling(Kernel.currentThreadID())
            let observed = Observed(), done = DispatchSemaphore(value: 0)
            let thread = Thread {
                observed.nice = try? Kernel.scheduling(Kernel.currentThreadID()).nice
                done.signal()
            }
            thread.start()
            done.wait()
            return (own, observed.nice)
        }
        #expect(own.policy == 0 && own.nice == 19, "\(own)")
        #expect(started == 19)
        // The process's other threads keep theirs (the main thread's, this task's now).
        #expect(try Kernel.scheduling(getpid()).nice == callerBefore.nice)
        #expect(try Kernel.scheduling(Kernel.currentThreadID()).nice == callerBefore.nice)
    }

    /// Whether the process is stopped by job control (`State: T`).
    static func isStopped(_ pid: Int32) -> Bool {
        ((try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? "").contains("State:\tT (stopped)")
    }

    /// Pauses the target (SIGSTOP) while protect runs, waits until two more epochs are
    /// committed (the second one captured after the pause), stops protect, and expects the
    /// standby's newest epoch to equal the target's memory byte for byte (but for the rseq areas,
    /// which the kernel rewrites whenever a thread returns to user space). The pause is checked
    /// on both sides of the comparison: a comparison with a running process proves nothing.
    /// The target is resumed afterwards.
    func expectStandbyEqualsMemory(_ pid: Int32, images: String, protect: ServiceProcess, standby: ServiceProcess) async throws {
        kill(pid, SIGSTOP)
        defer { kill(pid, SIGCONT) }
        var waited = 0
        while !Self.isStopped(pid) && waited < 100 { try await Task.sleep(for: .milliseconds(20)); waited += 1 }
        #expect(Self.isStopped(pid), "the process stopped")
        let paused = StandbyImages.newest(images)?.epoch.rawValue ?? 0
        _ = try await StandbyImages.awaitEpoch(images, atLeast: paused + 2)
        let ended = standby.connectionsEnded
        #expect(await protect.stop(SIGTERM) == 0, "\(protect.text.suffix(1000))")
        // The standby is done with the connection (and any compaction after its last epoch).
        await standby.awaitConnectionEnded(since: ended)
        let newest = try #require(StandbyImages.newest(images))
        #expect(CheckpointImage.verifyChain(newest.image.path).isEmpty)
        #expect(Self.isStopped(pid), "still stopped before the comparison")
        let differing = try StandbyImages.differingPages(newest.image, pid: pid)
        #expect(Self.isStopped(pid), "still stopped after the comparison")
        #expect(differing.compared > 2000, "the scenario's memory is in the image (\(differing.compared) pages)")
        #expect(differing.pages.isEmpty, "pages of \(newest.image.path) differing from the process: \(differing.pages.prefix(4).map { "0x" + String($0, radix: 16) })")
    }

    @Test func aProtectedProcessIsPromotedOnTheStandbyHostAndPassesItsSelfCheck() async throws {
        try await withHosts { hosts in
            let scratch = try ScratchDirectory()
            defer { scratch.remove() }
            let images = scratch.path + "/standby"
            let (child, log) = try await startScenario(hosts, scratch, mib: 16)
            defer { child.stop() }
            let pid = child.pid
            let standby = try standby(hosts, scratch, images: images, name: "standby", compactEvery: 8)
            try await standby.awaitLog("listening on")
            var protect = try protect(pid, hosts, scratch, interval: 50, name: "protect")
            _ = try await StandbyImages.awaitEpoch(images, atLeast: 20)
            #expect(protect.text.contains("sending a full base"))
            #expect(standby.text.contains("compacted the chain into a full base"), "\(standby.text.suffix(2000))")
            // The chain a compaction replaced is removed in the background, while epochs go on.
            let compacted = try #require(Self.compactedEpoch(standby.text))
            var replacedLeft: [String] = []
            for _ in 0..<100 {
                replacedLeft = ((try? Kernel.listDirectory(images + "/epochs")) ?? []).filter {
                    $0 == ".\(compacted.directoryName).compact" || ($0.count == 12 && UInt64($0).map { $0 < compacted.rawValue } == true)
                }
                if replacedLeft.isEmpty { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(replacedLeft.isEmpty, "epoch \(compacted)'s replaced chain still there: \(replacedLeft)")
            // At a pause the standby holds exactly the process's memory.
            try await expectStandbyEqualsMemory(pid, images: images, protect: protect, standby: standby)
            // A new protect resynchronises (its tracking is new: a full base), then runs on.
            let before = StandbyImages.newest(images)!.epoch.rawValue
            protect = try self.protect(pid, hosts, scratch, interval: 50, name: "protect2")
            _ = try await StandbyImages.awaitEpoch(images, atLeast: before + 10)
            // The primary host fails: the process and protect are killed.
            let ended = standby.connectionsEnded
            // protect first: a target killed while protect holds it frozen is reaped only once its
            // tracer lets go of it (a wait for the target before that could hang).
            await protect.stop(SIGKILL)
            kill(pid, SIGKILL)
            child.stop()
            // The standby may still be committing the epoch in flight: read its newest once it
            // has seen the connection end.
            await standby.awaitConnectionEnded(since: ended)
            let committed = try #require(StandbyImages.newest(images)).epoch
            let promote = try await ToolRun(ToolRun.mitosis, ["promote", images], prefix: hosts.prefix(hosts.b))
            #expect(promote.status == 0, "\(promote.standardError)")
            #expect(promote.standardOutput.hasPrefix("promoted epoch \(committed.rawValue) "), "\(promote.standardOutput)")
            #expect(promote.standardOutput.contains(" as process \(pid) "), "\(promote.standardOutput)")
            defer { kill(pid, SIGKILL) }
            // The standby stopped for the promotion, and the directory is fenced.
            #expect(await standby.stop(SIGTERM, timeout: .seconds(5)) == 0)
            #expect(FileManager.default.fileExists(atPath: images + "/PROMOTED"))
            // The process runs on host B, with its pid, and passes its self-check.
            #expect(try Kernel.readLink("/proc/\(pid)/ns/net") == (try await hosts.namespaceLink(hosts.b)))
            kill(pid, SIGUSR1)
            let check = try await CheckpointedScenario.awaitCheck(2, in: log)
            #expect(check.contains(" PASS ") && CheckpointedScenario.value("handled", in: check) == "2", "\(check)")
            // A standby never serves a promoted directory again.
            let again = try await ToolRun(ToolRun.mitosis, ["standby", "--listen", "127.0.0.1:0", "--images", images])
            #expect(again.status == 1 && again.standardError.contains("was promoted"), "\(again.standardError)")
            kill(pid, SIGKILL)
        }
    }

    @Test func aStandbyKilledMidEpochResynchronisesAndThePrimaryNeverStops() async throws {
        try await withHosts { hosts in
            let scratch = try ScratchDirectory()
            defer { scratch.remove() }
            let images = scratch.path + "/standby"
            let (child, log) = try await startScenario(hosts, scratch, mib: 64)
            defer { child.stop() }
            let pid = child.pid
            let first = try standby(hosts, scratch, images: images, name: "standby1", compactEvery: 0)
            try await first.awaitLog("listening on")
            let protect = try protect(pid, hosts, scratch, interval: 20, name: "protect")
            let reached = try await StandbyImages.awaitEpoch(images, atLeast: 5).rawValue
            await first.stop(SIGKILL)
            // What the killed standby left: at most its epoch in flight, hidden, removed at the next start.
            let leftovers = StandbyImages.hiddenEntries(images)
            // The primary runs on, unharmed, while its standby is gone.
            try await protect.awaitLog("retrying")
            kill(pid, SIGUSR1)
            #expect(try await CheckpointedScenario.awaitCheck(2, in: log).contains(" PASS "))
            #expect(protect.child.isRunning)
            // The standby comes back on the same directory: protect resumes where it left off.
            let second = try standby(hosts, scratch, images: images, name: "standby2", compactEvery: 0)
            _ = try await StandbyImages.awaitEpoch(images, atLeast: reached + 5)
            #expect(Set(StandbyImages.hiddenEntries(images)).isDisjoint(with: leftovers), "\(leftovers)")
            #expect(leftovers.isEmpty || second.text.contains("removing"))
            #expect(protect.text.components(separatedBy: "protect: connected to").count == 3, "\(protect.text.suffix(2000))")
            // Resumed from the standby's newest epoch when it is the last one acknowledged (killed
            // mid-epoch), with a full base when the standby committed an epoch it never acknowledged.
            #expect(protect.text.contains("sending the changes since epoch") || protect.text.components(separatedBy: "sending a full base").count == 3)
            #expect(CheckpointImage.verifyChain(StandbyImages.newest(images)!.image.path).isEmpty)
            try await expectStandbyEqualsMemory(pid, images: images, protect: protect, standby: second)
            await second.stop(SIGTERM)
            var waited = 0
            while Self.isStopped(pid) && waited < 100 { try await Task.sleep(for: .milliseconds(20)); waited += 1 }
            kill(pid, SIGUSR1)
            #expect(try await CheckpointedScenario.awaitCheck(3, in: log, timeout: .seconds(30)).contains(" PASS "))
            #expect(try TargetHealth.tracer(of: pid) == 0)
        }
    }
}
