import MitosisKernel
import MitosisModel

extension TrackingStrategy {
    /// The best strategy among those the kernel offers: soft-dirty (cheapest, no trace in the
    /// target), else userfaultfd write-protection (exact), else content hashes (always works).
    public static func best(softDirty: Bool, userfaultfdWriteProtect: Bool) -> TrackingStrategy {
        if softDirty { return .softDirty }
        if userfaultfdWriteProtect { return .userfaultfdWriteProtect }
        return .hash
    }

    /// The strategy `auto` picks: the best this kernel offers (probed once, see `isSupported`).
    public static var automatic: TrackingStrategy {
        best(softDirty: TrackingStrategy.softDirty.isSupported,
             userfaultfdWriteProtect: TrackingStrategy.userfaultfdWriteProtect.isSupported)
    }

    /// Whether this kernel offers the strategy (probed once, on Mitosis's own memory: cheap enough
    /// to decide whether a test runs; the same checks as `mitosis check`'s probes).
    public var isSupported: Bool {
        switch self {
        case .softDirty: return Self.softDirtyWorks
        case .userfaultfdWriteProtect: return Self.userfaultfdWriteProtectWorks
        case .hash: return true
        }
    }

    /// A tracker of this strategy for `pid`, not yet started.
    public func makeTracker(pid: Int32) throws -> DirtyTracker {
        guard isSupported else {
            throw MitosisError.unsupported(feature: "\(rawValue) dirty tracking", detail: unsupportedReason)
        }
        switch self {
        case .softDirty: return try SoftDirtyTracker(pid: pid)
        case .userfaultfdWriteProtect: return try WriteProtectTracker(pid: pid)
        case .hash: return try HashTracker(pid: pid)
        }
    }

    /// Why the kernel does not offer the strategy.
    public var unsupportedReason: String {
        switch self {
        case .softDirty: return "the soft-dirty bit never sets (kernel built without CONFIG_MEM_SOFT_DIRTY)"
        case .userfaultfdWriteProtect: return "needs PAGEMAP_SCAN and UFFD_FEATURE_WP_ASYNC (Linux 6.7+)"
        case .hash: return ""
        }
    }

    /// Soft-dirty works when a page written after `clear_refs` shows bit 55: the `soft-dirty`
    /// probe of `mitosis check`, run once on a page of Mitosis's own (clearing its own soft-dirty
    /// bits harms nothing).
    static let softDirtyWorks: Bool = withOwnPage { page in
        (try? KernelProbe.checkSoftDirty(pid: Kernel.currentProcessID(), page: page)) != nil
    }

    /// userfaultfd write-protect tracking works when `PAGEMAP_SCAN` exists and a userfaultfd
    /// accepts asynchronous write-protection of unpopulated pages: the `pagemap-scan` and
    /// `uffd-wp-async` probes of `mitosis check`, run once.
    static let userfaultfdWriteProtectWorks: Bool = withOwnPage { page in
        (try? KernelProbe.checkPagemapScan(page: page)) != nil && (try? KernelProbe.checkUserfaultfdWriteProtectAsync()) != nil
    }

    /// Runs `body` with the address of a page of Mitosis's own, written once (so it is present).
    private static func withOwnPage(_ body: (UInt64) -> Bool) -> Bool {
        let size = Int(PagemapFile.pageSize)
        let page = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: size)
        defer { page.deallocate() }
        page.storeBytes(of: 1, as: UInt8.self)
        return body(UInt64(UInt(bitPattern: page)))
    }
}
