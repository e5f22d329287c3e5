import CMitosis
import Glibc
import SystemPackage

/// One 64-bit entry of `/proc/PID/pagemap`, describing one virtual page.
package struct PagemapEntry: RawRepresentable, Hashable, Sendable {
    package var rawValue: UInt64
    package init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 63: the page is in RAM.
    package var isPresent: Bool { rawValue & (1 << 63) != 0 }
    /// Bit 62: the page is in swap.
    package var isSwapped: Bool { rawValue & (1 << 62) != 0 }
    /// Bit 61: a file page or shared anonymous (shmem) page — not a private anonymous copy.
    package var isFileOrSharedAnonymous: Bool { rawValue & (1 << 61) != 0 }
    /// Bit 57: the PTE is write-protected by userfaultfd.
    package var isUffdWriteProtected: Bool { rawValue & (1 << 57) != 0 }
    /// Bit 56: the page is mapped by this process only.
    package var isExclusive: Bool { rawValue & (1 << 56) != 0 }
    /// Bit 55: the PTE is soft-dirty (written since the last `clear_refs` 4).
    package var isSoftDirty: Bool { rawValue & (1 << 55) != 0 }
    /// A PTE marker (userfaultfd write-protection of a page that holds nothing), which the kernel
    /// reports as swapped with swap type 31 (`SWP_PTE_MARKER`, the last type). The type is shown
    /// to CAP_SYS_ADMIN only; without it a marker reads as a swapped page.
    package var isMarker: Bool { isSwapped && rawValue & 0x1f == 0x1f }
    /// Bits 0–54 of a present page: its page frame number (0 unless the reader has CAP_SYS_ADMIN).
    package var frame: UInt64 { rawValue & ((1 << 55) - 1) }
    /// Whether the page is the shared zero page (read, never written), when frames are shown.
    package var isZeroPage: Bool { isPresent && PagemapFile.zeroPageFrame.map { $0 != 0 && frame == $0 } ?? false }
}

/// Page categories of `PAGEMAP_SCAN` (`PAGE_IS_*`).
package struct PageCategories: OptionSet, Hashable, Sendable {
    package let rawValue: UInt64
    package init(rawValue: UInt64) { self.rawValue = rawValue }
    /// In a VMA registered for asynchronous userfaultfd write-protection.
    package static let writeProtectAllowed = PageCategories(rawValue: 1 << 0)
    /// Written since it was last write-protected.
    package static let written = PageCategories(rawValue: 1 << 1)
    package static let file = PageCategories(rawValue: 1 << 2)
    package static let present = PageCategories(rawValue: 1 << 3)
    package static let swapped = PageCategories(rawValue: 1 << 4)
    /// Maps the shared zero page: never written.
    package static let pfnZero = PageCategories(rawValue: 1 << 5)
    package static let huge = PageCategories(rawValue: 1 << 6)
    package static let softDirty = PageCategories(rawValue: 1 << 7)
}

/// A run of pages with the same categories, as `PAGEMAP_SCAN` reports it (`struct page_region`).
package struct PageRegion: Hashable, Sendable {
    package var start: UInt64
    package var end: UInt64
    package var categories: PageCategories
}

/// An open `/proc/PID/pagemap`: reads entries and, on kernels that have it, runs `PAGEMAP_SCAN`.
/// Closing it is the owner's job (`close()`); it holds no other resource.
@usableFromInline package struct PagemapFile: Sendable {
    package let pid: Int32
    package let descriptor: FileDescriptor

    /// The size of a page on this machine. The corresponding C function is `sysconf`.
    @usableFromInline package static let pageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    /// Opens `/proc/PID/pagemap` (a live thread's when the main thread has exited: see
    /// `Kernel.procEntry`). The corresponding system call is `open`.
    package init(pid: Int32) throws(Errno) {
        self.pid = pid
        descriptor = FileDescriptor(rawValue: try Kernel.check { open("/proc/\(Kernel.procEntry(pid))/pagemap", O_RDONLY | O_CLOEXEC) })
    }

    package func close() { try? descriptor.close() }

    /// The entries of `count` pages from `address` (page-aligned). A range past the end of the
    /// address space yields fewer entries. The corresponding system call is `pread`.
    package func entries(at address: UInt64, count: Int) throws(Errno) -> [PagemapEntry] {
        var raw = [UInt64](repeating: 0, count: count)
        var filled = 0
        let base = Int(bitPattern: UInt(address / Self.pageSize * 8))
        while filled < count {
            let n = try Kernel.check {
                raw.withUnsafeMutableBytes { buffer in
                    pread(descriptor.rawValue, buffer.baseAddress! + filled * 8, (count - filled) * 8, base + filled * 8)
                }
            }
            if n == 0 { break }
            filled += n / 8
        }
        return raw[0..<filled].map(PagemapEntry.init(rawValue:))
    }

    /// What one `PAGEMAP_SCAN` asks for.
    package struct ScanRequest: Sendable {
        package var start: UInt64
        package var end: UInt64
        /// Write-protect the matching pages after reporting them (`PM_SCAN_WP_MATCHING`).
        package var writeProtectMatching = false
        /// Fail with EPERM on a VMA not registered for async write-protection (`PM_SCAN_CHECK_WPASYNC`).
        package var checkWriteProtectAsync = false
        /// Categories that must all be set (after inversion) for a page to match.
        package var required: PageCategories = []
        /// Categories of `required` that must be clear instead of set.
        package var inverted: PageCategories = []
        /// At least one of these must be set (empty: no condition).
        package var anyOf: PageCategories = []
        /// Categories reported in each region.
        package var returned: PageCategories = []
        /// Stop after this many matching pages (0: no limit).
        package var maxPages: UInt64 = 0

        package init(start: UInt64, end: UInt64) {
            self.start = start
            self.end = end
        }
    }

    /// Runs `PAGEMAP_SCAN` over the whole request range, looping while the kernel stops early
    /// (output vector full). Returns the matching regions in address order.
    /// The corresponding system call is `ioctl(PAGEMAP_SCAN)`.
    package func scan(_ request: ScanRequest) throws(Errno) -> [PageRegion] {
        // The kernel fills the vector before it is read: on the stack, not a zeroed array per call
        // (a scan runs per mapping, several times per epoch).
        try withUnsafeTemporaryAllocation(of: page_region.self, capacity: 1024) { vector throws(Errno) in
            try scan(request, into: vector)
        }
    }

    private func scan(_ request: ScanRequest, into vector: UnsafeMutableBufferPointer<page_region>) throws(Errno) -> [PageRegion] {
        var regions: [PageRegion] = []
        var cursor = request.start
        var remainingPages = request.maxPages
        while cursor < request.end {
            var argument = pm_scan_arg()
            argument.size = UInt64(MemoryLayout<pm_scan_arg>.size)
            argument.flags = (request.writeProtectMatching ? MITOSIS_PM_SCAN_WP_MATCHING : 0)
                | (request.checkWriteProtectAsync ? MITOSIS_PM_SCAN_CHECK_WPASYNC : 0)
            argument.start = cursor
            argument.end = request.end
            argument.vec_len = UInt64(vector.count)
            argument.max_pages = remainingPages
            argument.category_mask = request.required.rawValue
            argument.category_inverted = request.inverted.rawValue
            argument.category_anyof_mask = request.anyOf.rawValue
            argument.return_mask = request.returned.rawValue
            argument.vec = UInt64(UInt(bitPattern: vector.baseAddress))
            let count = try Kernel.check { mitosis_pagemap_scan(descriptor.rawValue, &argument) }
            for region in vector[0..<count] {
                regions.append(PageRegion(start: region.start, end: region.end,
                                          categories: PageCategories(rawValue: region.categories)))
                if request.maxPages > 0 { remainingPages -= (region.end - region.start) / Self.pageSize }
            }
            if request.maxPages > 0 && remainingPages == 0 { break }
            if argument.walk_end <= cursor { break }
            cursor = argument.walk_end
        }
        return regions
    }

    /// The frame number of the shared zero page, learned by reading a fresh anonymous page of
    /// Mitosis itself; nil when frames are hidden. The corresponding system calls are `mmap`/`munmap`.
    package static let zeroPageFrame: UInt64? = {
        let size = Int(pageSize)
        guard let page = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), page != MAP_FAILED else { return nil }
        defer { munmap(page, size) }
        _ = page.load(as: UInt8.self)
        guard let file = try? PagemapFile(pid: getpid()) else { return nil }
        defer { file.close() }
        let entry = try? file.entries(at: UInt64(UInt(bitPattern: page)), count: 1).first
        guard let entry, entry.isPresent, entry.frame != 0 else { return nil }
        return entry.frame
    }()

    /// Whether this kernel has `PAGEMAP_SCAN` (6.7+): an empty scan of page 0 succeeds.
    package func supportsScan() -> Bool {
        (try? scan(ScanRequest(start: 0, end: Self.pageSize))) != nil
    }
}

extension Kernel {
    /// What `/proc/PID/clear_refs` resets.
    package enum ClearRefs: String, Sendable {
        /// `4`: clears the soft-dirty bit of every PTE of the process.
        case softDirty = "4"
    }

    /// Writes to `/proc/PID/clear_refs`. The corresponding system call is `write`.
    package static func clearRefs(pid: Int32, _ kind: ClearRefs) throws(Errno) {
        let fd = try check { open("/proc/\(procEntry(pid))/clear_refs", O_WRONLY | O_CLOEXEC) }
        defer { Glibc.close(fd) }
        let text = Array(kind.rawValue.utf8)
        try check { write(fd, text, text.count) }
    }
}
