import Foundation
import Testing
@testable import MitosisCheckpoint
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisTrace

/// Page map reading on a child holding known memory (`mitosis-scenario memory`).
@Suite struct PageMapTests {
    static let scanAvailable = ((try? PagemapFile(pid: getpid()))?.supportsScan()) ?? false

    func pageMap(_ child: ScenarioProcess, _ method: PageMapReader.Method) throws -> ProcessPageMap {
        let reader = try PageMapReader(pid: child.pid, method: method)
        defer { reader.close() }
        return try reader.read(ProcessReader.mappings(TargetProcess(pid: child.pid), detailed: false))
    }

    func check(_ method: PageMapReader.Method) async throws {
        let child = try await ScenarioProcess("memory")
        defer { child.stop() }
        let page = UInt64(try child.intFact("page_size"))
        let anon = UInt64(try child.fact("anon").dropFirst(2), radix: 16)!
        let shared = UInt64(try child.fact("shared").dropFirst(2), radix: 16)!
        let file = UInt64(try child.fact("file").dropFirst(2), radix: 16)!
        let heap = UInt64(try child.fact("heap").dropFirst(2), radix: 16)!
        try await child.settle()
        let before = try TargetHealth(pid: child.pid)
        let map = try pageMap(child, method)

        // Private anonymous: the 48 written pages, not the 16 never touched.
        #expect(map.data.clamped(start: anon, end: anon + 64 * page) == PageSet([.init(start: anon, end: anon + 48 * page)]))
        // Shared anonymous: every page.
        #expect(map.data.clamped(start: shared, end: shared + 16 * page) == PageSet([.init(start: shared, end: shared + 16 * page)]))
        // Private mapping of a file unlinked since: all 16 pages, the 12 clean ones too (a deleted
        // file cannot be opened again to read them back). Clean pages of a file that still exists
        // are not data: HostileImageTests and the image round trips read them from the file.
        #expect(fileMappingIsDeleted(map, file))
        #expect(map.data.clamped(start: file, end: file + 16 * page) == PageSet([.init(start: file, end: file + 16 * page)]))
        let fileMapping = try #require(map.mappings.first { $0.mapping.start == file })
        #expect(fileMapping.otherPagesAreFile)
        #expect(!fileMapping.mapping.isShared)
        let sharedMapping = try #require(map.mappings.first { $0.mapping.start == shared })
        #expect(sharedMapping.mapping.kind == .sharedAnonymous)
        // Heap: the 8 written pages are data.
        #expect(map.data.clamped(start: heap, end: heap + 8 * page) == PageSet([.init(start: heap, end: heap + 8 * page)]))
        // The kernel's own mappings are left out.
        #expect(!map.mappings.contains { $0.mapping.kind == .vdso || $0.mapping.kind == .vvar })
        #expect(map.pagesScanned == map.mappings.reduce(0) { $0 + Int($1.mapping.length / page) })
        #expect(try TargetHealth(pid: child.pid) == before)
    }

    @Test func entriesClassifyEveryKindOfMemory() async throws { try await check(.entries) }

    @Test(.enabled(if: scanAvailable, "this kernel has no PAGEMAP_SCAN (Linux 6.7+)"))
    func scanClassifiesEveryKindOfMemory() async throws { try await check(.scan) }

    @Test(.enabled(if: scanAvailable, "this kernel has no PAGEMAP_SCAN (Linux 6.7+)"))
    func scanAndEntriesAgree() async throws {
        let child = try await ScenarioProcess("memory")
        defer { child.stop() }
        try await child.settle()
        let scan = try pageMap(child, .scan)
        let entries = try pageMap(child, .entries)
        #expect(scan.mappings.map(\.mapping) == entries.mappings.map(\.mapping))
        let differing = entries.data.subtracting(scan.data).union(scan.data.subtracting(entries.data))
        let pagemap = try PagemapFile(pid: child.pid)
        defer { pagemap.close() }
        let detail = try differing.ranges.prefix(4).map { range -> String in
            let entry = try pagemap.entries(at: range.start, count: 1).first?.rawValue ?? 0
            var request = PagemapFile.ScanRequest(start: range.start, end: range.start + PagemapFile.pageSize)
            request.returned = [.present, .swapped, .file, .pfnZero, .written, .huge]
            request.anyOf = [.present, .swapped]
            let categories = try pagemap.scan(request).first?.categories.rawValue ?? 0
            return "0x\(String(range.start, radix: 16)): entry 0x\(String(entry, radix: 16)) categories 0x\(String(categories, radix: 16)) zero \(String(PagemapFile.zeroPageFrame ?? 0, radix: 16))"
        }
        #expect(scan.data == entries.data, "\(detail)")
    }

    @Test func pageSetOperations() {
        let a = PageSet([.init(start: 0x1000, end: 0x5000), .init(start: 0x8000, end: 0x9000)])
        let b = PageSet([.init(start: 0x3000, end: 0x8800)])
        #expect(a.union(b) == PageSet([.init(start: 0x1000, end: 0x9000)]))
        #expect(a.intersection(b) == PageSet([.init(start: 0x3000, end: 0x5000), .init(start: 0x8000, end: 0x8800)]))
        #expect(a.subtracting(b) == PageSet([.init(start: 0x1000, end: 0x3000), .init(start: 0x8800, end: 0x9000)]))
        #expect(a.contains(0x4fff) && !a.contains(0x5000) && a.contains(0x8000))
        #expect(a.byteCount == 0x5000)
        var c = PageSet()
        c.insert(start: 0x2000, end: 0x3000)
        c.insert(start: 0x3000, end: 0x4000)
        c.insert(start: 0x1000, end: 0x2000)
        #expect(c.ranges == [.init(start: 0x1000, end: 0x4000)])
    }
}

private func fileMappingIsDeleted(_ map: ProcessPageMap, _ start: UInt64) -> Bool {
    map.mappings.first { $0.mapping.start == start }?.mapping.deleted == true
}
