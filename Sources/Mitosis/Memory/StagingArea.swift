/// Page copies taken during a checkpoint, held in Mitosis until the target is thawed and the set
/// of pages is final — a sink accepts every page once, and a page copied while the target runs may
/// have to be copied again. Memory is kept in 2 MiB chunks addressed like the target's, allocated
/// on first use, so only what was copied takes space.
final class StagingArea {
    static let chunkShift: UInt64 = 21
    static let chunkSize = 1 << Int(chunkShift)
    private var chunks: [UInt64: UnsafeMutableRawPointer] = [:]

    deinit {
        for chunk in chunks.values { chunk.deallocate() }
    }

    /// The pieces of `range` that lie within one chunk each, with the buffer holding each.
    func pieces(of range: PageSet.Range) -> [(address: UInt64, buffer: UnsafeMutableRawBufferPointer)] {
        var result: [(UInt64, UnsafeMutableRawBufferPointer)] = []
        var address = range.start
        while address < range.end {
            let index = address >> Self.chunkShift
            let chunkEnd = (index + 1) << Self.chunkShift
            let end = min(range.end, chunkEnd)
            let chunk = chunks[index] ?? {
                let fresh = UnsafeMutableRawPointer.allocate(byteCount: Self.chunkSize, alignment: Int(PagemapFile.pageSize))
                chunks[index] = fresh
                return fresh
            }()
            let offset = Int(address - (index << Self.chunkShift))
            result.append((address, UnsafeMutableRawBufferPointer(start: chunk + offset, count: Int(end - address))))
            address = end
        }
        return result
    }
}
