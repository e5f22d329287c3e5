import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisKernel
@testable import MitosisImage
@testable import MitosisModel

/// A sink that does something to the world when the checkpoint begins, then writes as `inner`.
final class InterferingSink: CheckpointSink, @unchecked Sendable {
    let inner: DirectorySink
    let onBegin: () -> Void
    init(_ inner: DirectorySink, onBegin: @escaping () -> Void) {
        self.inner = inner
        self.onBegin = onBegin
    }
    func begin(_ header: CheckpointHeader) throws {
        try inner.begin(header)
        onBegin()
    }
    func writePages(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws { try inner.writePages(at: address, bytes) }
    func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest { try inner.finish(manifest) }
    func abort(reason: String) { inner.abort(reason: reason) }
}

/// The `memory` scenario, settled, and a scratch directory for one test: both gone once `body`
/// returns or throws.
private func withSettledMemory(_ body: (ScenarioProcess, ScratchDirectory) async throws -> Void) async throws {
    let child = try await ScenarioProcess("memory")
    defer { child.stop() }
    try await child.settle()
    let scratch = try ScratchDirectory()
    defer { scratch.remove() }
    try await body(child, scratch)
}

@Suite struct CheckpointFaultTests {
    /// The partial image a failed checkpoint of `name` left in `directory`.
    static func partialImage(in directory: String, name: String) throws -> String {
        let entries = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix(".\(name).partial-") }
        #expect(entries.count == 1)
        #expect(!FileManager.default.fileExists(atPath: directory + "/" + name), "no image in place")
        return directory + "/" + (entries.first ?? "")
    }

    @Test func targetExitingMidDumpMarksTheImageIncomplete() async throws {
        try await withSettledMemory { child, scratch in
            let pid = child.pid
            let session = try await CheckpointSession(pid: pid, options: CheckpointOptions(strategy: .hash))
            let sink = InterferingSink(DirectorySink(directory: scratch.path + "/1")) { child.stop() }
            await #expect(throws: MitosisError.targetExited(pid)) {
                _ = try await session.checkpoint(to: sink)
            }
            await session.stop()
            #expect(MitosisError.targetExited(pid).summary
                == "process \(pid) exited while mitosis was working on it (an image being written is left marked incomplete)")
            let partial = try Self.partialImage(in: scratch.path, name: "1")
            #expect {
                _ = try CheckpointImage.open(partial)
            } throws: { error in
                guard case ImageError.incomplete(_, let reason) = error else { return false }
                return reason.contains("process \(pid) exited while mitosis was working on it")
            }
        }
    }

    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root"))
    func fullDiskFailsCleanlyAndLeavesTheTargetAsItWas() async throws {
        try await withSettledMemory { child, scratch in
            let small = scratch.path + "/small"
            try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: false)
            try #require(mount("tmpfs", small, "tmpfs", 0, "size=64k") == 0, "mount tmpfs: errno \(errno)")
            defer { umount2(small, Int32(MNT_DETACH)) }
            let before = try TargetHealth(pid: child.pid)

            let session = try await CheckpointSession(pid: child.pid)
            await #expect {
                _ = try await session.checkpoint(to: DirectorySink(directory: small + "/1"))
            } throws: { error in
                guard case ImageError.noSpace = error else { return false }
                return true
            }
            // The session survives a failed checkpoint: the next one (elsewhere) works.
            let retry = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/2"))
            #expect(retry.manifest.kind == .full)
            await session.stop()
            _ = try Self.partialImage(in: small, name: "1")
            await #expect(try TargetHealth.runsFreely(child.pid))
            #expect(try TargetHealth(pid: child.pid) == before)
        }
    }

    @Test func corruptedImageFailsVerification() async throws {
        try await withSettledMemory { child, scratch in
            let before = try TargetHealth(pid: child.pid)
            let session = try await CheckpointSession(pid: child.pid)
            let result = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
            await session.stop()
            let image = try CheckpointImage.open(scratch.path + "/1")
            #expect(image.verify().isEmpty)

            // Flip one byte of the first stored page.
            let data = scratch.path + "/1/pages.data"
            let handle = try FileHandle(forUpdating: URL(fileURLWithPath: data))
            try handle.seek(toOffset: 100)
            let byte = try #require(try handle.read(upToCount: 1)).first!
            try handle.seek(toOffset: 100)
            try handle.write(contentsOf: Data([byte ^ 0xff]))
            try handle.close()

            let problems = try CheckpointImage.open(scratch.path + "/1").verify()
            #expect(!problems.isEmpty)
            #expect(problems.contains { if case .checksumMismatch = $0 { true } else { false } })
            let firstStored = try #require(CheckpointSession.pages(of: result.manifest, in: .stored).ranges.first)
            let run = try #require(image.runs.min { $0.dataOffset < $1.dataOffset })
            #expect(throws: ImageError.self) {
                _ = try CheckpointImage.open(scratch.path + "/1").read(address: run.address, length: 4096)
            }
            #expect(firstStored.start <= run.address)
            await #expect(try TargetHealth.runsFreely(child.pid))
            #expect(try TargetHealth(pid: child.pid) == before)
        }
    }
}

/// `mitosis dump` and `mitosis track`, run as a user runs them.
@Suite struct CheckpointCommandTests {
    static func summaries(_ run: ToolRun) throws -> [CheckpointSummary] {
        try JSONOutput.decoder().decode([CheckpointSummary].self, from: Data(run.standardOutput.utf8))
    }

    @Test func dumpOfAStoppedTargetLeavesItStopped() async throws {
        try await withSettledMemory { child, scratch in
            let before = try TargetHealth(pid: child.pid)
            kill(child.pid, SIGSTOP)
            var state: Character = "?"
            for _ in 0..<200 where state != "T" { state = try TargetHealth.threadStates(of: child.pid)[child.pid] ?? "?"; try await Task.sleep(for: .microseconds(5000)) }
            #expect(state == "T")

            let run = try await ToolRun(ToolRun.mitosis, ["dump", "\(child.pid)", "--images", scratch.path + "/1", "--json"])
            #expect(run.status == 0, "\(run.standardError)")
            let summary = try JSONOutput.decoder().decode(CheckpointSummary.self, from: Data(run.standardOutput.utf8))
            #expect(summary.kind == .full && summary.pid == child.pid && summary.path == scratch.path + "/1")
            #expect(try TargetHealth.threadStates(of: child.pid)[child.pid] == "T")
            #expect(try TargetHealth.tracer(of: child.pid) == 0)
            #expect(try CheckpointImage.open(scratch.path + "/1").verify().isEmpty)
            kill(child.pid, SIGCONT)
            try await child.send("ping")
            #expect(try TargetHealth(pid: child.pid) == before)
        }
    }

    @Test func dumpWithParentStoresOnlyWhatChanged() async throws {
        let child = try await ScenarioProcess("memory")
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let anon = UInt64(try child.fact("anon").dropFirst(2), radix: 16)!
        try await child.settle()
        let before = try TargetHealth(pid: child.pid)
        let first = try await ToolRun(ToolRun.mitosis, ["dump", "\(child.pid)", "--images", scratch.path + "/full"])
        #expect(first.status == 0, "\(first.standardError)")
        #expect(first.standardOutput.hasPrefix("full checkpoint 0 of process \(child.pid)"))
        try await child.send("write anon 5 1,2")
        let second = try await ToolRun(ToolRun.mitosis, ["dump", "\(child.pid)", "--images", scratch.path + "/next",
                                                   "--parent", scratch.path + "/full", "--track", "hash", "--json"])
        #expect(second.status == 0, "\(second.standardError)")
        let summary = try JSONOutput.decoder().decode(CheckpointSummary.self, from: Data(second.standardOutput.utf8))
        #expect(summary.kind == .incremental && summary.parent == "../full" && summary.tracking == "hash")
        let manifest = try CheckpointImage.open(scratch.path + "/next").manifest
        let page = UInt64(manifest.pageSize)
        #expect(CheckpointSession.pages(of: manifest, in: .stored).clamped(start: anon, end: anon + 64 * page)
                == PageSet([.init(start: anon + page, end: anon + 3 * page)]))
        #expect(summary.stats.pagesWritten < 40)
        try MemorySnapshot.expectChain(at: scratch.path + "/next", equals: try MemorySnapshot.take(pid: child.pid, manifest: manifest))
        #expect(try TargetHealth(pid: child.pid) == before)
    }

    @Test func dumpWithKillKillsOnlyAfterTheImageIsCommitted() async throws {
        try await withSettledMemory { child, scratch in
            let run = try await ToolRun(ToolRun.mitosis, ["dump", "\(child.pid)", "--images", scratch.path + "/1", "--kill"])
            #expect(run.status == 0, "\(run.standardError)")
            #expect(try CheckpointImage.open(scratch.path + "/1").verify().isEmpty)
            var alive = true
            for _ in 0..<200 where alive { alive = child.isAlive; try await Task.sleep(for: .microseconds(5000)) }
            #expect(!alive)
        }
    }

    @Test func trackKeepsAChainOfIncrementalCheckpoints() async throws {
        try await withSettledMemory { child, scratch in
            let before = try TargetHealth(pid: child.pid)
            let run = try await ToolRun(ToolRun.mitosis, ["track", "\(child.pid)", "--images", scratch.path, "--interval", "50", "--count", "3", "--json"])
            #expect(run.status == 0, "\(run.standardError)")
            let summaries = try Self.summaries(run)
            #expect(summaries.map(\.kind) == [.full, .incremental, .incremental])
            #expect(summaries.map(\.parent) == [nil, "../1", "../2"])
            #expect(summaries.map(\.sequence) == [0, 1, 2])
            #expect(try CheckpointImage.open(scratch.path + "/3").chain().images.count == 3)
            await #expect(try TargetHealth.runsFreely(child.pid))
            #expect(try TargetHealth(pid: child.pid) == before)
        }
    }

    @Test func badArgumentsFailWithOneLine() async throws {
        let run = try await ToolRun(ToolRun.mitosis, ["dump", "0", "--images", "/tmp/x"])
        #expect(run.status == 1)
        #expect(run.standardError == "mitosis: '0' is not a valid process id\n")
        let count = try await ToolRun(ToolRun.mitosis, ["track", "1", "--images", "/tmp/x", "--count", "0"])
        #expect(count.status != 0)
    }
}

extension UffdWriteProtectTrackingTests {
    /// The tool dies while tracking: the kernel releases the userfaultfd with the tool, which
    /// unregisters every range and lifts every write-protection; the target keeps nothing.
    @Test(.enabled(if: TrackingStrategy.userfaultfdWriteProtect.isSupported, "\(TrackingStrategy.userfaultfdWriteProtect.unsupportedReason)"))
    func toolDeathLeavesNoTrace() async throws {
        try await withSettledMemory { child, scratch in
            let before = try TargetHealth(pid: child.pid)
            let tool = try ToolRun.start(ToolRun.mitosis, ["track", "\(child.pid)", "--images", scratch.path, "--interval", "60000",
                                                           "--count", "2", "--track", "uffd-wp"])
            var committed = false
            for _ in 0..<1000 where !committed {
                committed = FileManager.default.fileExists(atPath: scratch.path + "/1/manifest.json")
                try await Task.sleep(for: .microseconds(10_000))
            }
            #expect(committed)
            let manifest = try CheckpointImage.open(scratch.path + "/1").manifest
            // While tracking: pages are write-protected, and the target holds no userfaultfd.
            #expect(try ChainScenario.writeProtectedPages(pid: child.pid, manifest: manifest) > 0)
            #expect(try TargetHealth(pid: child.pid).descriptors == before.descriptors)
            tool.signal(SIGKILL)
            _ = try await Blocking.run { tool.wait() }
            await #expect(try TargetHealth.runsFreely(child.pid))
            #expect(try ChainScenario.writeProtectedPages(pid: child.pid, manifest: manifest) == 0)
            #expect(try TargetHealth(pid: child.pid) == before)
            try await child.send("write anon 3 0")
        }
    }
}
