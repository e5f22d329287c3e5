/// How Mitosis finds the pages a target wrote since the last look.
public enum TrackingStrategy: String, CaseIterable, Codable, Sendable {
    /// The kernel's soft-dirty PTE bit: cleared through `/proc/PID/clear_refs`, read from
    /// pagemap bit 55. Needs `CONFIG_MEM_SOFT_DIRTY`.
    case softDirty = "soft-dirty"
    /// Asynchronous userfaultfd write-protection, read (and re-armed atomically) with
    /// `PAGEMAP_SCAN`. Exact; needs Linux 6.7+.
    case userfaultfdWriteProtect = "uffd-wp"
    /// A content hash of every page, compared with the one of the bytes last copied. Works on any
    /// kernel, at the cost of reading all memory each time.
    case hash
}

/// Finds the pages a target wrote since the previous `collect` (or since `start`).
///
/// The three implementations are interchangeable. A tracker reports writes to pages it watched;
/// pages it could not watch (a mapping created since the last look) are reported as written.
/// The checkpoint engine copies only data pages that are written or that it has no valid copy
/// of, so a tracker never needs to know what a checkpoint holds.
///
/// Not for concurrent use: the one owner (a `CheckpointSession`) calls it one call at a time.
public protocol DirtyTracker: AnyObject, Sendable {
    var strategy: TrackingStrategy { get }
    /// True when `collect` is exact only while the target is frozen (reading and re-arming are
    /// two steps, and a write between them would be lost).
    var collectRequiresFreeze: Bool { get }
    /// Arms tracking for the mappings of `pageMap`.
    func start(_ pageMap: ProcessPageMap) async throws
    /// The pages written since the last call, re-arming tracking for them.
    func collect(_ pageMap: ProcessPageMap) throws -> PageSet
    /// Tells the tracker which bytes were copied at `address` (whole pages).
    func recordCopied(at address: UInt64, _ bytes: UnsafeRawBufferPointer)
    /// Ends tracking and removes every trace of it from the target. Idempotent.
    func stop()
}

extension DirtyTracker {
    public func recordCopied(at address: UInt64, _ bytes: UnsafeRawBufferPointer) {}
}
