import Foundation
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel

/// A fresh directory for images, removed by `remove()`.
struct ScratchDirectory {
    let path: String
    init() throws {
        path = NSTemporaryDirectory() + "mitosis-memory-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// The bytes of a live process, as the chain must reproduce them.
enum MemorySnapshot {
    /// Every page the manifest says the checkpoint holds bytes for (stored, inherited, never
    /// touched), read from the process now: address → page bytes.
    static func take(pid: Int32, manifest: CheckpointManifest) throws -> [UInt64: [UInt8]] {
        var pages: [UInt64: [UInt8]] = [:]
        let size = manifest.pageSize
        let memory = try ProcessMemoryFile(pid: pid)
        defer { memory.close() }
        for mapping in manifest.mappings {
            for range in mapping.pages where range.state != .cleanFile {
                var page = range.start
                while page < range.end {
                    var bytes = [UInt8](repeating: 0, count: size)
                    let n = try bytes.withUnsafeMutableBytes { try memory.read(at: page, into: $0) }
                    #expect(n == size, "page 0x\(String(page, radix: 16)) of \(mapping.path ?? "anonymous") is readable")
                    pages[page] = bytes
                    page += UInt64(size)
                }
            }
        }
        return pages
    }

    /// Expects the chain ending at `path` to give exactly `snapshot`'s bytes, page by page.
    static func expectChain(at path: String, equals snapshot: [UInt64: [UInt8]]) throws {
        let chain = try CheckpointImage.open(path).chain()
        var mismatches: [UInt64] = []
        for (page, bytes) in snapshot where try chain.read(address: page, length: bytes.count) != bytes {
            mismatches.append(page)
        }
        let described = mismatches.sorted().prefix(4).map { page -> String in
            let mapping = chain.newest.manifest.mappings.first { $0.start <= page && page < $0.end }
            let state = mapping?.pages.first { $0.start <= page && page < $0.end }?.state.rawValue ?? "?"
            let old = (try? chain.read(address: page, length: snapshot[page]!.count)) ?? []
            let differing = zip(old, snapshot[page]!).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            return "0x\(String(page, radix: 16)) \(mapping?.perms ?? "") \(mapping?.path ?? "anonymous") \(state) bytes \(differing.prefix(4))…(\(differing.count))"
        }
        #expect(mismatches.isEmpty, "pages differing from the process at \(path): \(described)")
    }
}

/// The chain test every strategy passes: a child writes known bytes in four kinds of memory, a
/// full checkpoint, the child writes a known subset, an incremental checkpoint. The incremental
/// image holds the written pages (and, in the child's regions, nothing else), and each image of
/// the chain reads back as the child's memory at its checkpoint, byte for byte.
enum ChainScenario {
    static func run(_ strategy: TrackingStrategy?) async throws {
        let child = try await ScenarioProcess("memory")
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let page = UInt64(try child.intFact("page_size"))
        func region(_ name: String) throws -> UInt64 { UInt64(try child.fact(name).dropFirst(2), radix: 16)! }
        let anon = try region("anon"), shared = try region("shared"), file = try region("file"), heap = try region("heap")
        try await child.send("spare 8")
        let spare = try region("spare")
        let before = try TargetHealth(pid: child.pid)

        let session = try await CheckpointSession(pid: child.pid, options: CheckpointOptions(strategy: strategy))
        let used = session.strategy
        #expect(used == (strategy ?? TrackingStrategy.best(softDirty: TrackingStrategy.softDirty.isSupported,
                                                           userfaultfdWriteProtect: TrackingStrategy.userfaultfdWriteProtect.isSupported)))
        let full = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
        #expect(full.manifest.kind == .full)
        #expect(full.manifest.tracking == used.rawValue)
        let snapshot1 = try MemorySnapshot.take(pid: child.pid, manifest: full.manifest)
        // Registers and descriptors were read while frozen: the one thread, the fds it holds.
        #expect(full.manifest.threads.map(\.tid) == [child.pid])
        #expect(full.manifest.descriptors?.map(\.fd) == before.descriptors.keys.sorted())
        #expect(full.manifest.descriptors?.map(\.target) == before.descriptors.keys.sorted().map { before.descriptors[$0]! })
        // Every data page of the child's regions is stored; the untouched and clean ones are not.
        let stored1 = CheckpointSession.pages(of: full.manifest, in: .stored)
        #expect(stored1.clamped(start: anon, end: anon + 64 * page) == PageSet([.init(start: anon, end: anon + 48 * page)]))
        #expect(stored1.clamped(start: shared, end: shared + 16 * page) == PageSet([.init(start: shared, end: shared + 16 * page)]))
        // The scenario's file is unlinked: its clean pages cannot be read back from it, so they are
        // stored too (clean pages of a file that exists are not: HostileImageTests).
        #expect(stored1.clamped(start: file, end: file + 16 * page) == PageSet([.init(start: file, end: file + 16 * page)]))
        #expect(CheckpointSession.pages(of: full.manifest, in: .cleanFile).clamped(start: file, end: file + 16 * page).isEmpty)
        #expect(CheckpointSession.pages(of: full.manifest, in: .neverTouched).clamped(start: anon, end: anon + 64 * page)
                == PageSet([.init(start: anon + 48 * page, end: anon + 64 * page)]))

        try await child.send("write anon 2 3,7,8,50")
        try await child.send("write shared 2 1")
        try await child.send("write file 2 2,9")
        try await child.send("write heap 2 5")
        let incremental = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/2"),
                                                       parent: .previous(path: "../1"))
        #expect(incremental.manifest.kind == .incremental)
        #expect(incremental.manifest.parent?.id == full.manifest.id)
        let snapshot2 = try MemorySnapshot.take(pid: child.pid, manifest: incremental.manifest)
        let stored2 = CheckpointSession.pages(of: incremental.manifest, in: .stored)
        func pages(_ base: UInt64, _ indices: [UInt64]) -> PageSet {
            PageSet(indices.map { PageSet.Range(start: base + $0 * page, end: base + ($0 + 1) * page) })
        }
        #expect(stored2.clamped(start: anon, end: anon + 64 * page) == pages(anon, [3, 7, 8, 50]))
        // Shared memory: content hashes tell which of its pages changed, whatever the strategy.
        let sharedWritten = pages(shared, [1])
        #expect(stored2.clamped(start: shared, end: shared + 16 * page) == sharedWritten)
        #expect(stored2.clamped(start: file, end: file + 16 * page) == pages(file, [2, 9]))
        #expect(stored2.clamped(start: heap, end: heap + 8 * page) == pages(heap, [5]))
        // Few others: the child's stack, stdio buffers and libc data it touched to read the commands.
        #expect(incremental.stats.pagesWritten <= sharedWritten.pageCount() + 8 + 24, "incremental stored \(incremental.stats.pagesWritten) pages")
        #expect(incremental.stats.pagesWritten < full.stats.pagesWritten)

        try MemorySnapshot.expectChain(at: scratch.path + "/1", equals: snapshot1)
        try MemorySnapshot.expectChain(at: scratch.path + "/2", equals: snapshot2)
        #expect(try CheckpointImage.open(scratch.path + "/2").verify().isEmpty)

        // A mapping created since, and a page discarded (MADV_DONTNEED): all of the one stored,
        // the other recorded as never touched (it reads as zeros again). The new mapping lies
        // right below the untouched spare one: Linux 6.12 keeps those two VMAs apart while
        // tracking with uffd-wp and merges them when it stops (TargetHealth.joinedMappings).
        try await child.send("map 5")
        let fresh = try region("new")
        #expect(fresh == spare - 5 * page)
        try await child.send("discard 10")
        let third = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/3"),
                                                 parent: .previous(path: "../2"))
        let snapshot3 = try MemorySnapshot.take(pid: child.pid, manifest: third.manifest)
        let stored3 = CheckpointSession.pages(of: third.manifest, in: .stored)
        #expect(stored3.clamped(start: fresh, end: fresh + 5 * page) == PageSet([.init(start: fresh, end: fresh + 5 * page)]))
        #expect(stored3.clamped(start: anon, end: anon + 64 * page).isEmpty)
        #expect(CheckpointSession.pages(of: third.manifest, in: .neverTouched).contains(anon + 10 * page))
        #expect(CheckpointSession.pages(of: third.manifest, in: .inherited).contains(anon + 3 * page))
        try MemorySnapshot.expectChain(at: scratch.path + "/3", equals: snapshot3)
        // The older images still read as the memory of their own instants.
        try MemorySnapshot.expectChain(at: scratch.path + "/2", equals: snapshot2)

        let afterMap = try TargetHealth(pid: child.pid)
        await session.stop()
        await #expect(try TargetHealth.runsFreely(child.pid))
        let after = try TargetHealth(pid: child.pid)
        #expect(after.descriptors == before.descriptors)
        if used == .userfaultfdWriteProtect {
            // Unregistering may merge VMAs that registering kept apart (TargetHealth.joinedMappings).
            #expect(after.joinedMappings == afterMap.joinedMappings, "\(after.mapsDifference(from: afterMap))")
        } else {
            #expect(after == afterMap, "\(after.mapsDifference(from: afterMap))")
        }
        #expect(try TargetHealth.userfaultfdRegistered(child.pid) == [])
        #expect(try writeProtectedPages(pid: child.pid, manifest: third.manifest) == 0)
    }

    /// How many pages of the process still carry a userfaultfd write-protect bit.
    static func writeProtectedPages(pid: Int32, manifest: CheckpointManifest) throws -> Int {
        let pagemap = try PagemapFile(pid: pid)
        defer { pagemap.close() }
        var count = 0
        for mapping in manifest.mappings {
            let entries = try pagemap.entries(at: mapping.start, count: Int((mapping.end - mapping.start) / UInt64(manifest.pageSize)))
            count += entries.filter(\.isUffdWriteProtected).count
        }
        return count
    }
}

extension ScenarioProcess {
    /// Waits until the child has read one command: its first read allocates stdio buffers on its
    /// heap, which would otherwise race with a page map or a snapshot taken right after READY.
    /// (It resets `facts`: read them first.)
    func settle() async throws {
        try await send("ping")
    }
}
