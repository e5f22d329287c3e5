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

    /// The strategy `auto` picks from what `mitosis check` found (`soft-dirty`, `pagemap-scan` and
    /// `uffd-wp-async` probes).
    public static func best(from report: KernelFeatureReport) -> TrackingStrategy {
        best(softDirty: report["soft-dirty"]?.supported ?? false,
             userfaultfdWriteProtect: (report["pagemap-scan"]?.supported ?? false) && (report["uffd-wp-async"]?.supported ?? false))
    }

    /// The best strategy this kernel offers, as `KernelFeatures` probes it (or, should the probe
    /// child fail to start, as probed on Mitosis itself).
    public static func automatic() async -> TrackingStrategy {
        guard let report = try? await KernelFeatures.check([.softDirty, .pagemapScan, .uffdWriteProtectAsync]) else {
            return best(softDirty: softDirtyWorks, userfaultfdWriteProtect: userfaultfdWriteProtectWorks)
        }
        return best(from: report)
    }

    /// Whether this kernel offers the strategy (probed once, on Mitosis's own memory: cheap enough
    /// to decide whether a test runs; `automatic` asks `KernelFeatures`).
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

    /// Soft-dirty works when a page written after `clear_refs` shows bit 55. Clearing Mitosis's own
    /// soft-dirty bits harms nothing.
    package static let softDirtyWorks: Bool = {
        let size = Int(PagemapFile.pageSize)
        let page = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: size)
        defer { page.deallocate() }
        page.storeBytes(of: 1, as: UInt8.self)
        guard let pagemap = try? PagemapFile(pid: Kernel.currentProcessID()) else { return false }
        defer { pagemap.close() }
        guard (try? Kernel.clearRefs(pid: Kernel.currentProcessID(), .softDirty)) != nil else { return false }
        page.storeBytes(of: 2, as: UInt8.self)
        let address = UInt64(UInt(bitPattern: page))
        return (try? pagemap.entries(at: address, count: 1))?.first?.isSoftDirty ?? false
    }()

    /// userfaultfd write-protect tracking works when `PAGEMAP_SCAN` exists and a userfaultfd
    /// accepts asynchronous write-protection, of unpopulated pages too.
    package static let userfaultfdWriteProtectWorks: Bool = {
        guard let pagemap = try? PagemapFile(pid: Kernel.currentProcessID()) else { return false }
        defer { pagemap.close() }
        guard pagemap.supportsScan() else { return false }
        guard let descriptor = try? Kernel.userfaultfd(flags: Kernel.trackingUserfaultfdFlags) else { return false }
        let uffd = Userfaultfd(descriptor: descriptor)
        defer { uffd.close() }
        let wanted: Userfaultfd.Features = [.writeProtectAsync, .writeProtectUnpopulated]
        return (try? uffd.enable(wanted))?.isSuperset(of: wanted) ?? false
    }()
}
