import Testing
@testable import MitosisImage
@testable import MitosisModel
@testable import MitosisRestore

/// The pages a restore writes come from the image `CheckpointChain.read` takes them from.
@Suite struct PageSourceTests {
    /// The bytes a restore writes for every stored or inherited page of the newest image.
    static func restoredBytes(_ chain: CheckpointChain) throws -> [(UInt64, [UInt8])] {
        let ranges = chain.newest.manifest.mappings.flatMap(\.pages).filter { $0.state == .stored || $0.state == .inherited }
        let source = PageSource(images: chain.images, loads: PageSource.loads(of: ranges, images: chain.images), depth: 2)
        defer { source.close() }
        var written: [(UInt64, [UInt8])] = []
        for range in ranges {
            try source.pieces(of: range) { at, bytes in written.append((at, Array(bytes))) }
        }
        return written
    }

    /// Checkpoint 1 stored page 1 again, checkpoint 2 page 2: in image 2 pages 0 and 1 are one
    /// inherited range over the full image's run of pages 0–3, page 1 of which is stale. A restore
    /// took the whole run from the full image (a redis restored from `mitosis track`'s chain crashed).
    @Test func aPageStoredAgainInAMiddleImageComesFromIt() throws {
        let root = try TempDirectory()
        let (paths, _, expected) = try Synthetic.chain(in: root)
        let chain = try CheckpointImage.open(paths[2]).chain()
        #expect(chain.images.count == 3)
        let written = try Self.restoredBytes(chain)
        let base: UInt64 = 0x10000
        #expect(written.map(\.0) == [base, base + 0x1000, base + 0x2000, base + 0x3000, base + 0x8000], "one piece per image switch")
        for (address, bytes) in written {
            let offset = Int(address - base)
            // Compared apart: a failing `#expect(a == b)` would print every byte.
            let asExpected = bytes == Array(expected[offset..<(offset + bytes.count)])
            let asRead = bytes == (try chain.read(address: address, length: bytes.count))
            #expect(asExpected && asRead, "page 0x\(String(address, radix: 16)): as the chain reads it \(asRead), as written \(asExpected)")
        }
        #expect(written.reduce(0) { $0 + $1.1.count } == 5 * Synthetic.page)
    }
}
