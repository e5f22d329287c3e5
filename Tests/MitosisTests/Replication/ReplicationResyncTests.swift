import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisReplication

/// Resynchronisation from protect's epoch history: a standby killed, its newest epochs lost,
/// started again: it gets only the pages changed since its newest committed epoch, not a full
/// base, and its image is byte-exact again.
@Suite struct ReplicationResyncTests {
    @Test func aStandbyThatLostItsNewestEpochsGetsOnlyThePagesChangedSince() async throws {
        let hosts = try await NetworkHosts()
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        do {
            let images = scratch.path + "/standby"
            let harness = ReplicationTests()
            let (child, log) = try await harness.startScenario(hosts, scratch, mib: 16)
            defer { child.stop() }
            let pid = child.pid
            let first = try harness.standby(hosts, scratch, images: images, name: "standby1", compactEvery: 0)
            try await first.awaitLog("listening on")
            let protect = try harness.protect(pid, hosts, scratch, interval: 50, name: "protect")
            let reached = try await StandbyImages.awaitEpoch(images, atLeast: 8).rawValue
            await first.stop(SIGKILL)
            // The standby loses its three newest epochs (a disk restored from a snapshot, say).
            let committed = ((try? Kernel.listDirectory(images + "/epochs")) ?? []).filter { !$0.hasPrefix(".") }.sorted()
            #expect(committed.count >= 8, "\(committed)")
            for name in committed.suffix(3) { try FileManager.default.removeItem(atPath: images + "/epochs/" + name) }
            let kept = try #require(StandbyImages.newest(images))
            #expect(kept.epoch.rawValue == UInt64(committed[committed.count - 4]) && kept.epoch.rawValue + 3 >= reached)
            try await protect.awaitLog("retrying")

            // Back, three epochs behind protect: the changes since its newest epoch, from the history.
            let second = try harness.standby(hosts, scratch, images: images, name: "standby2", compactEvery: 0)
            try await protect.awaitLog("resynchronising from the history")
            _ = try await StandbyImages.awaitEpoch(images, atLeast: kept.epoch.rawValue + 4)
            #expect(protect.text.components(separatedBy: "sending a full base").count == 2, "one full base only:\n\(protect.text.suffix(2000))")
            #expect(protect.text.contains("standby at epoch \(kept.epoch.rawValue); sending the changes since epoch \(kept.epoch.rawValue) (resynchronising"),
                    "\(protect.text.suffix(2000))")
            // The first epoch after the reconnection builds on the kept one and stores a few pages,
            // where the full base stored the scenario's 16 MiB.
            let names = ((try? Kernel.listDirectory(images + "/epochs")) ?? []).filter { !$0.hasPrefix(".") }.sorted()
            let resynced = try #require(names.first { UInt64($0)! > kept.epoch.rawValue })
            let image = try CheckpointImage.open(images + "/epochs/" + resynced)
            #expect(image.manifest.kind == .incremental)
            #expect(image.manifest.parent?.id == kept.image.manifest.id)
            let base = try CheckpointImage.open(images + "/epochs/" + names[0])
            #expect(base.manifest.kind == .full && base.manifest.stats.pagesWritten > 4000, "\(base.manifest.stats.pagesWritten)")
            #expect(image.manifest.stats.pagesWritten < base.manifest.stats.pagesWritten / 4,
                    "resync stored \(image.manifest.stats.pagesWritten) pages, the base \(base.manifest.stats.pagesWritten)")
            #expect(CheckpointImage.verifyChain(StandbyImages.newest(images)!.image.path).isEmpty)
            // And the standby's image is the process's memory, byte for byte.
            try await harness.expectStandbyEqualsMemory(pid, images: images, protect: protect, standby: second)
            await second.stop(SIGTERM)
            var waited = 0
            while ReplicationTests.isStopped(pid) && waited < 100 { try await Task.sleep(for: .milliseconds(20)); waited += 1 }
            kill(pid, SIGUSR1)
            #expect(try await CheckpointedScenario.awaitCheck(2, in: log, timeout: .seconds(30)).contains(" PASS "))
            #expect(try TargetHealth.tracer(of: pid) == 0)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
    }
}
