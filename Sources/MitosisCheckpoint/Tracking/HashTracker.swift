import MitosisImage
import MitosisKernel
import MitosisModel
/// Content-hash tracking for kernels with neither soft-dirty nor userfaultfd write-protection:
/// the XXH64 of every page copied is kept, and `collect` reads every data page again and reports
/// those whose hash differs — or that have no hash yet. Exact for what matters (the hash is of
/// the bytes the checkpoint holds, so a page changed and changed back is not copied again), but it
/// reads all memory at each look. Leaves nothing in the target.
public final class HashTracker: DirtyTracker, @unchecked Sendable {
    public var strategy: TrackingStrategy { .hash }
    public var collectRequiresFreeze: Bool { false }
    /// Page address → XXH64 of the bytes last copied.
    private var hashes: [UInt64: UInt64] = [:]
    private let reader: MemoryReader
    private let pageSize = PagemapFile.pageSize

    public init(pid: Int32) throws(MitosisError) {
        reader = try MemoryReader(pid: pid)
    }

    public func start(_ pageMap: ProcessPageMap) async throws {}

    public func collect(_ pageMap: ProcessPageMap) throws -> PageSet {
        try changed(in: pageMap.data)
    }

    /// The pages of `pages` whose bytes differ from the copy last recorded, or that have none;
    /// forgets the hashes of pages outside `pages`.
    public func changed(in pages: PageSet) throws -> PageSet {
        var dirty = PageSet()
        let chunk = 256 * Int(pageSize)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: Int(pageSize))
        defer { buffer.deallocate() }
        var seen: [UInt64: UInt64] = [:]
        seen.reserveCapacity(hashes.count)
        for range in pages.ranges {
            var address = range.start
            while address < range.end {
                let length = Int(min(range.end - address, UInt64(chunk)))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
                do {
                    try reader.read(at: address, into: part)
                } catch .targetExited(let pid) {
                    throw MitosisError.targetExited(pid)
                } catch {
                    // Unmapped meanwhile: whatever is there now has no valid copy.
                    dirty.insert(start: address, end: address + UInt64(length))
                    address += UInt64(length)
                    continue
                }
                for offset in stride(from: 0, to: length, by: Int(pageSize)) {
                    let page = address + UInt64(offset)
                    guard let old = hashes[page] else {
                        dirty.insert(start: page, end: page + pageSize)
                        continue
                    }
                    seen[page] = old
                    let now = Checksum.xxh64(UnsafeRawBufferPointer(rebasing: part[offset..<offset + Int(pageSize)]))
                    if now != old { dirty.insert(start: page, end: page + pageSize) }
                }
                address += UInt64(length)
            }
        }
        // Pages no longer data (unmapped, discarded) need no hash: if they come back, they are new.
        hashes = seen
        return dirty
    }

    public func recordCopied(at address: UInt64, _ bytes: UnsafeRawBufferPointer) {
        let size = Int(pageSize)
        for offset in stride(from: 0, to: bytes.count, by: size) {
            hashes[address + UInt64(offset)] = Checksum.xxh64(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + size]))
        }
    }

    private var stopped = false

    public func stop() {
        guard !stopped else { return }
        stopped = true
        hashes = [:]
        reader.close()
    }
}
