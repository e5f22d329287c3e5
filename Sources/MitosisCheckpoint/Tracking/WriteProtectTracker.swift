import Logging
import SystemPackage
import MitosisInspect
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Exact dirty tracking with asynchronous userfaultfd write-protection (Linux 6.7+).
///
/// The target creates the userfaultfd (a userfaultfd serves the address space that created it):
/// Mitosis injects `userfaultfd()` into it while it is frozen for a moment, takes the descriptor
/// over with `pidfd_getfd` and closes the target's copy at once. Everything else runs in Mitosis
/// while the target runs: every checkpointed mapping is registered and write-protected; in async
/// mode the kernel resolves a write fault itself, marking the page written; `PAGEMAP_SCAN` lists
/// the written pages and write-protects them again in the same call, so no write is ever lost.
///
/// A mapping the kernel reports as not registered (created, moved or replaced since the last look)
/// is registered then and reported written in full. Stopping unregisters every range, which lifts
/// all write-protection, and closes the descriptor; should Mitosis die instead, the kernel does
/// the same when the descriptor's last reference goes. Async faults never wait for Mitosis.
public final class WriteProtectTracker: DirtyTracker, @unchecked Sendable {
    public var strategy: TrackingStrategy { .userfaultfdWriteProtect }
    public var collectRequiresFreeze: Bool { false }
    public let pid: Int32
    private let pagemap: PagemapFile
    private var userfaultfd: Userfaultfd?
    /// Ranges this tracker registered; unregistered at `stop`.
    private var registered = PageSet()
    /// Mappings that cannot be registered (the target uses userfaultfd there itself, or the kernel
    /// refuses the kind): reported written at every look.
    private var untrackable = PageSet()
    private let logger = Logger(label: "mitosis.uffd-wp")
    private var stopped = false

    public init(pid: Int32) throws(MitosisError) {
        self.pid = pid
        do {
            pagemap = try PagemapFile(pid: pid)
        } catch {
            throw TargetProcess.failure(error, pid: pid, reading: "/proc/\(pid)/pagemap")
        }
    }

    public func start(_ pageMap: ProcessPageMap) async throws {
        let descriptor = try await withFrozenProcess(pid) { tracer in
            try await tracer.createTargetUserfaultfd(flags: Kernel.trackingUserfaultfdFlags)
        }
        let uffd = Userfaultfd(descriptor: descriptor)
        // Unpopulated pages are protected too (with PTE markers, which the page map tells from
        // swapped pages): otherwise `PAGEMAP_SCAN` reports every untouched page as written.
        let wanted: Userfaultfd.Features = [.writeProtectAsync, .writeProtectUnpopulated]
        do {
            let offered = try uffd.enable(wanted)
            guard offered.isSuperset(of: wanted) else {
                uffd.close()
                throw MitosisError.unsupported(feature: "userfaultfd asynchronous write-protection",
                                               detail: "UFFD_FEATURE_WP_ASYNC and UFFD_FEATURE_WP_UNPOPULATED need Linux 6.7+")
            }
        } catch let error as Errno {
            uffd.close()
            throw MitosisError.unsupported(feature: "userfaultfd asynchronous write-protection", detail: "UFFDIO_API: \(error)")
        }
        userfaultfd = uffd
        for entry in pageMap.mappings { register(entry.mapping) }
    }

    /// Registers and write-protects one mapping; returns false if it cannot be tracked.
    @discardableResult
    private func register(_ mapping: MemoryMapping) -> Bool {
        guard let userfaultfd, !Self.isLeftOut(mapping) else { return false }
        do {
            try userfaultfd.registerWriteProtect(start: mapping.start, end: mapping.end)
            registered.insert(start: mapping.start, end: mapping.end)
            try userfaultfd.writeProtect(start: mapping.start, end: mapping.end, true)
            return true
        } catch {
            logger.debug("cannot track \(mapping.perms) 0x\(String(mapping.start, radix: 16)) \(mapping.path ?? ""): \(error)")
            untrackable.insert(start: mapping.start, end: mapping.end)
            return false
        }
    }

    public func collect(_ pageMap: ProcessPageMap) throws -> PageSet {
        var dirty = PageSet()
        for entry in pageMap.mappings {
            let mapping = entry.mapping
            if Self.isLeftOut(mapping) { continue }
            if untrackable.contains(mapping.start) && !registered.contains(mapping.start) {
                dirty.insert(start: mapping.start, end: mapping.end)
                continue
            }
            var request = PagemapFile.ScanRequest(start: mapping.start, end: mapping.end)
            request.writeProtectMatching = true
            request.checkWriteProtectAsync = true
            request.required = [.written]
            request.returned = [.written]
            do {
                for region in try pagemap.scan(request) { dirty.insert(start: region.start, end: region.end) }
            } catch .notPermitted {
                // Not registered: new since the last look. Track it from now on; all of it is new.
                untrackable = untrackable.subtracting(PageSet([.init(start: mapping.start, end: mapping.end)]))
                register(mapping)
                dirty.insert(start: mapping.start, end: mapping.end)
            } catch .noSuchFileOrDirectory, .noSuchProcess {
                throw MitosisError.targetExited(pid)
            } catch {
                // Unmapped meanwhile (EINVAL/ENOMEM on a vanished range): nothing to report for it.
                logger.debug("scan 0x\(String(mapping.start, radix: 16)): \(error)")
            }
        }
        return dirty
    }

    /// Mappings this tracker does not watch: a shared file mapping's data is its file's (nothing
    /// of it is copied), and writes to shared memory are found by content hashes (the session's),
    /// since write-protecting this process's page tables misses other processes' writes and
    /// `write(2)` to a memfd.
    private static func isLeftOut(_ mapping: MemoryMapping) -> Bool {
        ProcessPageMap.isFileShared(mapping) || ProcessPageMap.isSharedMemory(mapping)
    }

    /// Unregisters every range (which lifts all write-protection) and closes the descriptor.
    /// Every address keeps its permissions, file and offset, but VMA boundaries may move: a
    /// mapping created during tracking is kept apart from a registered neighbour, and whether
    /// `UFFDIO_UNREGISTER` merges the two is the kernel's call (Linux 6.12 merges a written
    /// mapping into an untouched one above it, which registering did not; see
    /// TargetHealth.joinedMappings in the tests).
    public func stop() {
        guard !stopped else { return }
        stopped = true
        if let userfaultfd {
            for range in registered.ranges {
                do { try userfaultfd.unregister(start: range.start, end: range.end) } catch {
                    logger.debug("unregister 0x\(String(range.start, radix: 16)): \(error)")
                }
            }
            userfaultfd.close()
        }
        userfaultfd = nil
        registered = PageSet()
        pagemap.close()
    }

    deinit { stop() }
}
