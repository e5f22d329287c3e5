import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// `--pidns`: a process whose pid is taken here is restored inside a new pid namespace, where
/// it has its pid and tids again, under a small init that ends with it.
@Suite(.serialized) struct RestorePidNamespaceTests {
    @Test func aTakenPidIsRestoredInsideANewPidNamespace() async throws {
        let scenario = try await CheckpointedScenario(mib: 8, workers: 2)
        defer { scenario.remove() }
        let pid = scenario.child.pid  // the original keeps running: its pid is taken
        let restorer = try Restorer(image: CheckpointImage.open(scenario.image))
        let chain = restorer.chain, manifest = restorer.manifest
        let result = try await restorer.restore(inNewPidNamespace: true, verify: { host in
            let pages = try RestoreVerification.differingPages(pid: host, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ") }
            let maps = try RestoreVerification.mappingDifferences(pid: host, manifest: manifest)
            guard maps.isEmpty else { throw RestoreFailure(description: maps.joined(separator: "; ")) }
        })
        let host = try #require(result.hostPid), initPid = try #require(result.namespaceInitPid)
        defer {
            kill(host, SIGKILL)
            Kernel.reap(initPid)  // the init (this process's child) exits once the process has
        }
        #expect(result.pid == pid && host != pid)
        // Inside, its own pid and every tid are the image's; its parent is the namespace's init.
        let status = ProcStatus(parsing: String(decoding: try Kernel.readFile("/proc/\(host)/status"), as: UTF8.self))
        #expect(status["NSpid"] == "\(host)\t\(pid)", "\(status["NSpid"] ?? "-")")
        #expect(status["PPid"] == "\(initPid)")
        let inner = try Kernel.listDirectory("/proc/\(host)/task").compactMap { Int32($0) }.map { tid in
            ProcStatus(parsing: String(decoding: (try? Kernel.readFile("/proc/\(host)/task/\(tid)/status")) ?? [], as: UTF8.self))["NSpid"]?
                .split(separator: "\t").last.flatMap { Int32($0) } ?? -1
        }
        #expect(inner.sorted() == manifest.threads.map(\.tid).sorted())
        #expect(String(decoding: try Kernel.readFile("/proc/\(initPid)/comm"), as: UTF8.self) == "mitosis-pidns\n")
        // It runs on and answers (its memory, pipe, epoll, handler, threads).
        kill(host, SIGUSR1)
        let check = try await CheckpointedScenario.awaitCheck(2, in: scenario.log)
        #expect(check.contains(" PASS "), "\(check)")
        // The original was not touched.
        #expect(scenario.child.isAlive)

        // The CLI names both pids; the process it restored ends with its own init.
        let run = try await ToolRun(ToolRun.mitosis, ["restore", "--pidns", scenario.image])
        #expect(run.status == 0, "\(run.standardError)")
        let printed = run.standardOutput.split(separator: " ")
        let second = printed.firstIndex(of: "(pid").flatMap { Int32(printed[$0 + 1]) } ?? -1
        #expect(run.standardOutput.hasPrefix("restored process \(pid) (pid \(second) on this host, in a new pid namespace) (\(manifest.threads.count) threads"), "\(run.standardOutput)")
        kill(second, SIGKILL)
        let deadline = ContinuousClock.now + .seconds(5)
        while FileManager.default.fileExists(atPath: "/proc/\(second)"), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!FileManager.default.fileExists(atPath: "/proc/\(second)"))
    }

    @Test func killingMitosisRestorePidnsAtAnyMomentLeavesNothing() async throws {
        let scenario = try await CheckpointedScenario(mib: 32, workers: 2)
        defer { scenario.remove() }
        let pid = scenario.child.pid  // taken: every restore goes into a new namespace
        var completed = 0, interrupted = 0
        // Other tests restore into pid namespaces at the same time: this test's inits are told
        // from theirs by a variable in the environment they inherit from the CLI.
        let tag = "MITOSIS_TEST_RUN=\(UInt64.random(in: 1...UInt64.max))"
        for delay in [0, 2, 5, 10, 20, 40, 70, 110, 160, 250] {
            let run = try ToolRun.start(ToolRun.mitosis, ["restore", "--pidns", scenario.image], prefix: ["/usr/bin/env", tag])
            try await Task.sleep(for: .milliseconds(delay + 30))  // the CLI takes some 30 ms to start
            run.signal(SIGKILL)
            let status = ChildProcess.exitCode(of: try await Blocking.run { run.wait() })
            try await Task.sleep(for: .milliseconds(100))
            // A restore that finished first left a running process: ended here.
            let restored = Self.processes(withNamespacePid: pid)
            if status != 128 + SIGKILL || !restored.isEmpty && restored.allSatisfy({ (try? TargetHealth.tracer(of: $0)) == 0 }) {
                completed += 1
                if !restored.isEmpty { #expect(!Self.namespaceInits(tagged: tag).isEmpty, "the restore's init carries the tag") }
                for host in restored { kill(host, SIGKILL) }
            } else {
                interrupted += 1
            }
            // No husk (EXITKILL) and no init (it exits with its last child) is left.
            let deadline = ContinuousClock.now + .seconds(5)
            while !(Self.processes(withNamespacePid: pid).isEmpty && Self.namespaceInits(tagged: tag).isEmpty), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(Self.processes(withNamespacePid: pid).isEmpty, "after a kill at \(delay) ms a process with pid \(pid) inside a namespace is left")
            #expect(Self.namespaceInits(tagged: tag).isEmpty, "after a kill at \(delay) ms an init is left: \(Self.namespaceInits(tagged: tag))")
        }
        #expect(interrupted > 0, "at least one kill landed mid-restore (\(completed) restores finished first)")
        #expect(scenario.child.isAlive, "the original was not touched")
    }

    /// Host pids of live (not zombie) processes whose pid inside a nested namespace is `pid`.
    static func processes(withNamespacePid pid: Int32) -> [Int32] {
        ((try? Kernel.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.filter { host in
            guard let text = try? Kernel.readFile("/proc/\(host)/status") else { return false }
            let status = ProcStatus(parsing: String(decoding: text, as: UTF8.self))
            let ids = status["NSpid"]?.split(separator: "\t") ?? []
            return ids.count > 1 && ids.last == "\(pid)" && status["State"]?.hasPrefix("Z") == false
        }
    }

    /// Live namespace inits of restores (named `mitosis-pidns`) whose environment holds `tag`.
    static func namespaceInits(tagged tag: String) -> [Int32] {
        ((try? Kernel.listDirectory("/proc")) ?? []).compactMap { Int32($0) }.filter { host in
            guard let comm = try? Kernel.readFile("/proc/\(host)/comm"), String(decoding: comm, as: UTF8.self) == "mitosis-pidns\n",
                  let environment = try? Kernel.readFile("/proc/\(host)/environ"),
                  environment.split(separator: 0).contains(where: { $0.elementsEqual(tag.utf8) }) else { return false }
            let stat = (try? Kernel.readFile("/proc/\(host)/stat")).flatMap { ProcStat(parsing: String(decoding: $0, as: UTF8.self)) }
            return stat?.state != "Z"
        }
    }
}
