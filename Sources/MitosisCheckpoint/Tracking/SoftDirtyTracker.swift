import SystemPackage
import MitosisInspect
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Where soft-dirty tracking reads pagemap entries and clears the bits: the live process, or
/// recorded entries in tests.
package protocol SoftDirtySource: Sendable {
    func entries(at address: UInt64, count: Int) throws(Errno) -> [PagemapEntry]
    func clearSoftDirty() throws(Errno)
}

/// Soft-dirty tracking: `/proc/PID/clear_refs` (4) clears every soft-dirty bit, each write sets
/// the bit of its page again (and a new mapping starts all soft-dirty), pagemap bit 55 tells.
///
/// Reading the bits and clearing them are two steps: a write between them would be lost, so
/// `collect` must run with the target frozen (`collectRequiresFreeze`).
public final class SoftDirtyTracker: DirtyTracker, @unchecked Sendable {
    public var strategy: TrackingStrategy { .softDirty }
    public var collectRequiresFreeze: Bool { true }
    package let source: SoftDirtySource

    package struct LiveSource: SoftDirtySource {
        package let pid: Int32
        package let pagemap: PagemapFile
        package func entries(at address: UInt64, count: Int) throws(Errno) -> [PagemapEntry] {
            try pagemap.entries(at: address, count: count)
        }
        package func clearSoftDirty() throws(Errno) { try Kernel.clearRefs(pid: pid, .softDirty) }
    }

    public init(pid: Int32) throws(MitosisError) {
        do {
            source = LiveSource(pid: pid, pagemap: try PagemapFile(pid: pid))
        } catch {
            throw TargetProcess.failure(error, pid: pid, reading: "/proc/\(pid)/pagemap")
        }
    }

    package init(source: SoftDirtySource) { self.source = source }

    public func start(_ pageMap: ProcessPageMap) async throws { try source.clearSoftDirty() }

    public func collect(_ pageMap: ProcessPageMap) throws -> PageSet {
        var dirty = PageSet()
        for entry in pageMap.mappings {
            let mapping = entry.mapping
            let pages = try PageMapReader.pages(start: mapping.start, end: mapping.end, read: source.entries) { $0.isSoftDirty }
            dirty = dirty.union(pages)
        }
        try source.clearSoftDirty()
        return dirty
    }

    private var stopped = false

    public func stop() {
        guard !stopped else { return }
        stopped = true
        if let live = source as? LiveSource { live.pagemap.close() }
    }
}
