import Foundation
import SystemPackage
import Testing
@testable import MitosisCheckpoint
@testable import MitosisKernel
@testable import MitosisModel

@Suite struct UffdWriteProtectTrackingTests {
    @Test(.enabled(if: TrackingStrategy.userfaultfdWriteProtect.isSupported, "\(TrackingStrategy.userfaultfdWriteProtect.unsupportedReason)"))
    func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(.userfaultfdWriteProtect)
    }
}

@Suite struct HashTrackingTests {
    @Test func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(.hash)
    }
}

@Suite struct SoftDirtyTrackingTests {
    @Test(.enabled(if: TrackingStrategy.softDirty.isSupported, "\(TrackingStrategy.softDirty.unsupportedReason)"))
    func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(.softDirty)
    }
}

/// Soft-dirty logic on pagemap entries in the format a soft-dirty kernel reports (present bit 63,
/// exclusive bit 56, soft-dirty bit 55, PFN in the low bits; a swapped entry with bit 62), so it
/// is tested where the running kernel lacks soft-dirty.
extension SoftDirtyTrackingTests {
    /// Replays one recorded pagemap snapshot per `collect`, counting `clear_refs` writes.
    final class RecordedPagemap: SoftDirtySource, @unchecked Sendable {
        var snapshots: [[UInt64: UInt64]]
        var clears = 0
        init(_ snapshots: [[UInt64: UInt64]]) { self.snapshots = snapshots }
        func entries(at address: UInt64, count: Int) throws(Errno) -> [PagemapEntry] {
            let current = snapshots[min(clears - 1, snapshots.count - 1)]
            return (0..<count).map { PagemapEntry(rawValue: current[address + UInt64($0) * PagemapFile.pageSize] ?? 0) }
        }
        func clearSoftDirty() throws(Errno) { clears += 1 }
    }

    static func mapping(_ start: UInt64, pages: UInt64) -> ProcessPageMap.Mapping {
        let map = MemoryMapping(start: start, end: start + pages * PagemapFile.pageSize, perms: "rw-p", offset: 0,
                                device: DeviceNumber(major: 0, minor: 0), inode: 0, path: nil, kind: .anonymous, deleted: false)
        return .init(mapping: map, data: PageSet())
    }

    @Test func softDirtyBitsOnRecordedPagemapData() async throws {
        let page = PagemapFile.pageSize
        let a: UInt64 = 0x7f00_0000_0000, b: UInt64 = 0x5600_0000_0000
        // Snapshot 1 (after start's clear): a+0 and a+2 written, b+1 swapped out after a write.
        // Snapshot 2 (after the first collect's clear): only a+3 written; a+0 present, clean.
        let recorded = RecordedPagemap([
            [a: 0x8180_0000_0012_3456, a + page: 0x8100_0000_0012_3457, a + 2 * page: 0x8180_0000_0012_3458,
             b + page: 0x4080_0000_0000_0a21],
            [a: 0x8100_0000_0012_3456, a + 3 * page: 0x8180_0000_0012_3999],
        ])
        let tracker = SoftDirtyTracker(source: recorded)
        #expect(tracker.collectRequiresFreeze)
        let map = ProcessPageMap(mappings: [Self.mapping(b, pages: 2), Self.mapping(a, pages: 4)], data: PageSet(), pagesScanned: 6)
        try await tracker.start(map)
        #expect(recorded.clears == 1)
        let first = try tracker.collect(map)
        #expect(first == PageSet([.init(start: a, end: a + page), .init(start: a + 2 * page, end: a + 3 * page),
                                  .init(start: b + page, end: b + 2 * page)]))
        #expect(recorded.clears == 2)
        let second = try tracker.collect(map)
        #expect(second == PageSet([.init(start: a + 3 * page, end: a + 4 * page)]))
        #expect(recorded.clears == 3)
    }
}

@Suite struct AutoTrackingTests {
    @Test func preferenceOrder() {
        #expect(TrackingStrategy.best(softDirty: true, userfaultfdWriteProtect: true) == .softDirty)
        #expect(TrackingStrategy.best(softDirty: true, userfaultfdWriteProtect: false) == .softDirty)
        #expect(TrackingStrategy.best(softDirty: false, userfaultfdWriteProtect: true) == .userfaultfdWriteProtect)
        #expect(TrackingStrategy.best(softDirty: false, userfaultfdWriteProtect: false) == .hash)
    }

    /// On this kernel: soft-dirty if its bit sets, else uffd-wp if PAGEMAP_SCAN and async
    /// write-protection work, else hash — checked against the kernel independently.
    @Test func picksTheBestThisKernelOffers() async throws {
        let pagemap = try PagemapFile(pid: getpid())
        defer { pagemap.close() }
        let expected: TrackingStrategy = TrackingStrategy.softDirty.isSupported ? .softDirty
            : (pagemap.supportsScan() && TrackingStrategy.userfaultfdWriteProtect.isSupported) ? .userfaultfdWriteProtect : .hash
        #expect(TrackingStrategy.automatic == expected)
        // `mitosis check`'s probes (run on a child) and the cached ones (run on Mitosis) agree.
        let report = try await KernelFeatures.check([.softDirty, .pagemapScan, .uffdWriteProtectAsync])
        #expect(report["soft-dirty"]?.supported == TrackingStrategy.softDirty.isSupported)
        #expect((report["pagemap-scan"]?.supported == true && report["uffd-wp-async"]?.supported == true)
                == TrackingStrategy.userfaultfdWriteProtect.isSupported)
        #expect(TrackingStrategy.hash.isSupported)
        // No strategy the kernel lacks is offered: asking for one fails with the reason.
        for strategy in TrackingStrategy.allCases where !strategy.isSupported {
            #expect(throws: MitosisError.unsupported(feature: "\(strategy.rawValue) dirty tracking", detail: strategy.unsupportedReason)) {
                _ = try strategy.makeTracker(pid: getpid())
            }
        }
    }

    @Test func chainOfCheckpointsIsByteExact() async throws {
        try await ChainScenario.run(nil)
    }
}
