import MitosisKernel
/// Page copies taken during a checkpoint, held in Mitosis until the target is thawed and the set
/// of pages is final — a sink accepts every page once, and a page copied while the target runs may
/// have to be copied again. Memory is kept in 2 MiB chunks addressed like the target's, carved
/// from 64 MiB slabs populated on first use, so only what was copied takes space. (Transparent
/// huge pages would mean fewer faults, but allocating them costs more than the faults they save.)
package final class StagingArea {
    package static let chunkShift: UInt64 = 21
    package static let chunkSize = 1 << Int(chunkShift)
    package static let chunksPerSlab = 32
    private var chunks: [UInt64: UnsafeMutableRawPointer] = [:]
    /// Mapped slabs (base, length) and the next free chunk of the last one.
    private var slabs: [(UnsafeMutableRawPointer, Int)] = []
    private var free: [UnsafeMutableRawPointer] = []

    deinit {
        for (base, length) in slabs { Kernel.unmap(base, length: length) }
    }

    private func newChunk() throws -> UnsafeMutableRawPointer {
        if free.isEmpty {
            let length = Self.chunksPerSlab * Self.chunkSize
            let base = try Kernel.mapAnonymous(length: length)
            slabs.append((base, length))
            free = (0..<Self.chunksPerSlab).reversed().map { base + $0 * Self.chunkSize }
        }
        return free.removeLast()
    }

    /// The pieces of `range` that lie within one chunk each, with the buffer holding each.
    package func pieces(of range: PageSet.Range) throws -> [(address: UInt64, buffer: UnsafeMutableRawBufferPointer)] {
        var result: [(UInt64, UnsafeMutableRawBufferPointer)] = []
        var address = range.start
        while address < range.end {
            let index = address >> Self.chunkShift
            let chunkEnd = (index + 1) << Self.chunkShift
            let end = min(range.end, chunkEnd)
            let chunk: UnsafeMutableRawPointer
            if let known = chunks[index] {
                chunk = known
            } else {
                chunk = try newChunk()
                chunks[index] = chunk
            }
            let offset = Int(address - (index << Self.chunkShift))
            result.append((address, UnsafeMutableRawBufferPointer(start: chunk + offset, count: Int(end - address))))
            address = end
        }
        return result
    }
}
