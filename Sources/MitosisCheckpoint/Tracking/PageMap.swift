import SystemPackage
import MitosisInspect
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Which pages of a process hold data worth copying, mapping by mapping.
///
/// A page is *data* when its bytes exist nowhere else: a present or swapped private anonymous
/// page, a private copy (copy-on-write) of a file page, or a page of shared anonymous or SysV
/// shared memory. Every other page of a mapping is recorded, not copied: in a file mapping it is a
/// clean file page (its bytes are the file's), elsewhere it was never touched (it reads as zeros).
/// The kernel's own mappings (`[vdso]`, `[vvar]`, `[vsyscall]`…) are left out.
public struct ProcessPageMap: Sendable {
    /// One mapping and its data pages.
    public struct Mapping: Sendable {
        public var mapping: MemoryMapping
        /// Data pages, inside `[mapping.start, mapping.end)`.
        public var data: PageSet

        /// What the pages that are not data are: the file's, or zeros.
        public var otherPagesAreFile: Bool { mapping.kind == .file }
    }

    /// The mappings Mitosis checkpoints, in address order.
    public var mappings: [Mapping]
    /// The union of every mapping's data pages.
    public var data: PageSet
    /// Pages examined (the size of every checkpointed mapping).
    public var pagesScanned: Int

    package init(mappings: [Mapping], data: PageSet, pagesScanned: Int) {
        self.mappings = mappings
        self.data = data
        self.pagesScanned = pagesScanned
    }

    /// Data pages of memory other processes may write too (shared anonymous, memfd and other
    /// unlinked shmem files, SysV segments): tracking this process's page tables cannot see
    /// their writes, nor `write(2)` to a memfd.
    public var sharedData: PageSet {
        PageSet(mappings.filter { Self.isSharedMemory($0.mapping) }.flatMap(\.data.ranges))
    }

    /// The whole extent of every shared-memory mapping (`isSharedMemory`).
    public var sharedMemory: PageSet {
        PageSet(mappings.filter { Self.isSharedMemory($0.mapping) }.map { PageSet.Range(start: $0.mapping.start, end: $0.mapping.end) })
    }

    /// Whether a mapping is shared memory whose pages the checkpoint stores: writes to it are
    /// found by comparing content hashes, whichever tracker follows the rest.
    public static func isSharedMemory(_ mapping: MemoryMapping) -> Bool {
        mapping.isShared && filePagesAreData(mapping)
    }

    /// Whether Mitosis keeps a mapping's pages at all: the kernel's own mappings are recreated
    /// by the kernel, not restored.
    public static func isCheckpointed(_ mapping: MemoryMapping) -> Bool {
        switch mapping.kind {
        case .vdso, .vvar, .vsyscall, .special: return false
        default: return true
        }
    }

    /// Whether the data of a mapping lives in a file instead of in the process: a shared file
    /// mapping writes through to its file, so none of its pages are copied.
    package static func isFileShared(_ mapping: MemoryMapping) -> Bool {
        mapping.kind == .file && mapping.isShared && !mapping.deleted
    }

    /// Whether a page the kernel reports as file-backed is data: shmem pages of shared anonymous
    /// and SysV memory are, page-cache pages of a file are not.
    package static func filePagesAreData(_ mapping: MemoryMapping) -> Bool {
        // A deleted file cannot be opened again to read clean pages back (nor identified): its
        // pages are kept in the image like anonymous memory.
        mapping.kind == .sharedAnonymous || mapping.kind == .sysvSharedMemory || (mapping.kind == .file && mapping.deleted)
    }
}

/// Reads a process's page map, with `PAGEMAP_SCAN` where the kernel has it (one call returns
/// runs of pages) and otherwise from `/proc/PID/pagemap` entries (8 bytes per page).
public struct PageMapReader: Sendable {
    /// How pages are classified.
    public enum Method: String, Sendable, CaseIterable {
        /// `PAGEMAP_SCAN` (Linux 6.7+).
        case scan
        /// `pread` of `/proc/PID/pagemap` entries.
        case entries
    }

    public let pid: Int32
    public let method: Method
    package let pagemap: PagemapFile

    /// Opens `/proc/PID/pagemap`; `method` nil picks `scan` where the kernel has it.
    public init(pid: Int32, method: Method? = nil) throws(MitosisError) {
        self.pid = pid
        do {
            pagemap = try PagemapFile(pid: pid)
        } catch {
            throw TargetProcess.failure(error, pid: pid, reading: "/proc/\(pid)/pagemap")
        }
        self.method = method ?? (pagemap.supportsScan() ? .scan : .entries)
    }

    public func close() { pagemap.close() }

    /// Classifies every page of the checkpointed `mappings`.
    public func read(_ mappings: [MemoryMapping]) throws(MitosisError) -> ProcessPageMap {
        try read(mappings, reusing: nil)
    }

    /// As `read(_:)`, but a mapping of `earlier` that is still there unchanged (same range,
    /// permissions, offset, inode and kind), and is private (`reusable`), keeps its data pages from `earlier`
    /// without a scan: the page walk of `PAGEMAP_SCAN` over every page table is most of a copy
    /// round's work. Pages that became data since are missing from such a mapping (the caller
    /// adds the pages its tracker reports written; the freeze reads the map afresh).
    package func read(_ mappings: [MemoryMapping], reusing earlier: ProcessPageMap?) throws(MitosisError) -> ProcessPageMap {
        var result = ProcessPageMap(mappings: [], data: PageSet(), pagesScanned: 0)
        var kept: [MemoryMapping: PageSet] = [:]
        for entry in earlier?.mappings ?? [] where Self.reusable(entry.mapping) { kept[entry.mapping] = entry.data }
        // Mappings come in address order, so their data ranges do too: one set built at the end.
        var ranges: [PageSet.Range] = []
        for mapping in mappings where ProcessPageMap.isCheckpointed(mapping) {
            let data: PageSet
            if let known = kept[mapping] {
                data = known
            } else {
                do {
                    data = try dataPages(of: mapping)
                } catch {
                    throw TargetProcess.failure(error, pid: pid, reading: "/proc/\(pid)/pagemap")
                }
                result.pagesScanned += Int(mapping.length / PagemapFile.pageSize)
            }
            result.mappings.append(.init(mapping: mapping, data: data))
            ranges += data.ranges
        }
        result.data = PageSet(ranges)
        return result
    }

    /// Whether a mapping's data pages may be carried over from an earlier read (`read(_:reusing:)`):
    /// private memory, whose writes its process's page tables show; not shared memory, which
    /// others write out of sight.
    package static func reusable(_ mapping: MemoryMapping) -> Bool {
        !mapping.isShared && (mapping.kind == .anonymous || mapping.kind == .heap || mapping.kind == .stack || mapping.kind == .file)
    }

    package func dataPages(of mapping: MemoryMapping) throws(Errno) -> PageSet {
        if ProcessPageMap.isFileShared(mapping) { return PageSet() }
        let fileIsData = ProcessPageMap.filePagesAreData(mapping)
        switch method {
        case .scan:
            var request = PagemapFile.ScanRequest(start: mapping.start, end: mapping.end)
            request.anyOf = [.present, .swapped]
            // Private anonymous memory holds anonymous pages and the zero page only: asking
            // whether a page is a file's costs the kernel a look at every page's `struct page`.
            let anonymous = mapping.kind == .anonymous || mapping.kind == .heap || mapping.kind == .stack
            request.returned = anonymous && !mapping.isShared ? [.present, .swapped, .pfnZero] : [.present, .swapped, .file, .pfnZero]
            var data = PageSet()
            for region in try pagemap.scan(request) where Self.isData(region.categories, fileIsData: fileIsData) {
                if region.categories.contains(.swapped) {
                    // Swapped or a PTE marker: only the entries tell.
                    data = data.union(try Self.dataPages(start: region.start, end: region.end, fileIsData: fileIsData) { address, count throws(Errno) in
                        try pagemap.entries(at: address, count: count)
                    })
                } else {
                    data.insert(start: region.start, end: region.end)
                }
            }
            return data
        case .entries:
            return try Self.dataPages(start: mapping.start, end: mapping.end, fileIsData: fileIsData) { address, count throws(Errno) in
                try pagemap.entries(at: address, count: count)
            }
        }
    }

    /// Whether a `PAGEMAP_SCAN` region is data.
    package static func isData(_ categories: PageCategories, fileIsData: Bool) -> Bool {
        guard !categories.intersection([.present, .swapped]).isEmpty else { return false }
        if categories.contains(.pfnZero) { return false }
        return fileIsData || !categories.contains(.file)
    }

    /// Whether a pagemap entry is data.
    package static func isData(_ entry: PagemapEntry, fileIsData: Bool) -> Bool {
        guard (entry.isPresent && !entry.isZeroPage) || (entry.isSwapped && !entry.isMarker) else { return false }
        return fileIsData || !entry.isFileOrSharedAnonymous
    }

    /// Data pages of `[start, end)` from pagemap entries that `read(address, count)` supplies
    /// (the live file, or recorded entries in tests), in chunks of 64 Ki entries.
    package static func dataPages(start: UInt64, end: UInt64, fileIsData: Bool,
                          read: (UInt64, Int) throws(Errno) -> [PagemapEntry]) throws(Errno) -> PageSet {
        try pages(start: start, end: end, read: read) { isData($0, fileIsData: fileIsData) }
    }

    /// Pages of `[start, end)` whose entry satisfies `predicate`.
    package static func pages(start: UInt64, end: UInt64, read: (UInt64, Int) throws(Errno) -> [PagemapEntry],
                      where predicate: (PagemapEntry) -> Bool) throws(Errno) -> PageSet {
        let pageSize = PagemapFile.pageSize
        var result = PageSet()
        var address = start
        while address < end {
            let count = Int(min((end - address) / pageSize, 65536))
            let entries = try read(address, count)
            if entries.isEmpty { break }
            for (index, entry) in entries.enumerated() where predicate(entry) {
                let page = address + UInt64(index) * pageSize
                result.insert(start: page, end: page + pageSize)
            }
            address += UInt64(entries.count) * pageSize
        }
        return result
    }
}
