import Foundation
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel

/// Incremental checkpoints store exactly the written pages of shared memory — a shared anonymous
/// mapping, a memfd and a SysV segment — whoever wrote them: the process itself, a forked child
/// through its own mapping (out of sight of the process's page tables), or `pwrite` to the memfd.
/// Runs with every strategy this kernel offers (shared memory is hashed with each).
@Suite struct SharedMemoryTrackingTests {
    @Test(arguments: TrackingStrategy.allCases.filter(\.isSupported))
    func incrementalStoresExactlyTheWrittenSharedPages(_ strategy: TrackingStrategy) async throws {
        let child = try await ScenarioProcess("sharedmem", ["256"])
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let page = UInt64(try child.intFact("page_size"))
        func region(_ name: String) throws -> UInt64 { UInt64(try child.fact(name).dropFirst(2), radix: 16)! }
        let shared = try region("shared"), memfd = try region("memfd"), sysv = try region("sysv")
        let extents = [(shared, UInt64(256)), (memfd, UInt64(64)), (sysv, UInt64(16))]
        let regions = PageSet(extents.map { PageSet.Range(start: $0.0, end: $0.0 + $0.1 * page) })
        func pages(_ base: UInt64, _ indices: [UInt64]) -> PageSet {
            PageSet(indices.map { PageSet.Range(start: base + $0 * page, end: base + ($0 + 1) * page) })
        }

        try await withCheckpointSession(pid: child.pid, options: CheckpointOptions(strategy: strategy)) { session in
            #expect(session.strategy == strategy)
            let full = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
            #expect(CheckpointSession.pages(of: full.manifest, in: .stored).intersection(regions) == regions)

            try await child.send("write shared 2 3,100,101,200")
            try await child.send("forkwrite shared 3 7,255")
            try await child.send("write memfd 2 1,5")
            try await child.send("pwrite memfd 3 9")
            try await child.send("forkwrite memfd 4 63")
            try await child.send("write sysv 2 2")
            try await child.send("forkwrite sysv 3 4")
            let written = pages(shared, [3, 7, 100, 101, 200, 255]).union(pages(memfd, [1, 5, 9, 63])).union(pages(sysv, [2, 4]))
            let incremental = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/2"),
                                                           parent: .previous(path: "../1"))
            let stored = CheckpointSession.pages(of: incremental.manifest, in: .stored)
            #expect(stored.intersection(regions) == written, "stored \(stored.intersection(regions)), written \(written)")
            #expect(CheckpointSession.pages(of: incremental.manifest, in: .inherited).intersection(regions) == regions.subtracting(written))
            // Beyond the regions, only what the child touched to read the commands (stack, stdio, libc data).
            #expect(incremental.stats.pagesWritten <= written.pageCount() + 24, "incremental stored \(incremental.stats.pagesWritten) pages")

            // A third checkpoint with nothing written in shared memory stores none of it.
            let third = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/3"), parent: .previous(path: "../2"))
            #expect(CheckpointSession.pages(of: third.manifest, in: .stored).intersection(regions).isEmpty)

            // Each image reads back as the regions' bytes now (unchanged since the second checkpoint).
            let snapshot = try MemorySnapshot.take(pid: child.pid, manifest: third.manifest).filter { regions.contains($0.key) }
            #expect(snapshot.count == Int(regions.pageCount()))
            try MemorySnapshot.expectChain(at: scratch.path + "/2", equals: snapshot)
            try MemorySnapshot.expectChain(at: scratch.path + "/3", equals: snapshot)
            #expect(try CheckpointImage.open(scratch.path + "/2").verify().isEmpty)
            try await child.send("check")
            #expect(try child.fact("check") == "PASS")
        }
        #expect(try TargetHealth.userfaultfdRegistered(child.pid) == [])
    }
}

/// A checkpoint that fails after collecting writes must not let the next one inherit those pages
/// from the previous image: the tracker, re-armed by the failed run, will not report them again.
@Suite struct FailedCheckpointTests {
    /// A sink that takes the pages and refuses to commit.
    final class RefusingSink: CheckpointSink, @unchecked Sendable {
        func begin(_ header: CheckpointHeader) throws {}
        func writePages(at address: UInt64, _ pages: UnsafeRawBufferPointer) throws {}
        func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest { throw ImageError.sinkState("refused for the test") }
        func abort(reason: String) {}
    }

    @Test(arguments: TrackingStrategy.allCases.filter(\.isSupported))
    func writesCollectedByAFailedCheckpointAreStoredByTheNext(_ strategy: TrackingStrategy) async throws {
        let child = try await ScenarioProcess("memory")
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let page = UInt64(try child.intFact("page_size"))
        let anon = UInt64(try child.fact("anon").dropFirst(2), radix: 16)!
        try await withCheckpointSession(pid: child.pid, options: CheckpointOptions(strategy: strategy)) { session in
            _ = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
            try await child.send("write anon 2 3")
            await #expect(throws: ImageError.self) {
                try await session.checkpoint(to: RefusingSink(), parent: .previous(path: "../1"))
            }
            let next = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/2"), parent: .previous(path: "../1"))
            #expect(CheckpointSession.pages(of: next.manifest, in: .stored).contains(anon + 3 * page))
            let snapshot = try MemorySnapshot.take(pid: child.pid, manifest: next.manifest)
            try MemorySnapshot.expectChain(at: scratch.path + "/2", equals: snapshot)
        }
    }
}
