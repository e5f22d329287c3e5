import Foundation
import Testing
@testable import MitosisImage
@testable import MitosisReplication

/// The primary's data-file deltas of an append-only file (redis's AOF): growth is shipped from
/// the exact old end, hashed on from the old last block's state, and the standby's copy built
/// from the deltas equals the file byte for byte.
@Suite struct DataFileDeltaTests {
    /// Deterministic bytes, different at every offset.
    static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    @Test func appendOnlyGrowthIsShippedFromTheOldEnd() throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let directory = scratch.path
        let path = directory + "/appendonly.aof"
        let block = DataFiles.blockSize
        var content = Self.bytes(block + 1000, seed: 1)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(content)))
        let handle = try #require(FileHandle(forWritingAtPath: path))
        defer { try? handle.close() }
        handle.seekToEndOfFile()

        let files = DataFiles(directories: [])
        var standby: MaterializedFile?
        // Epoch 1: new to the standby, whole.
        files.freeze()
        let first = try files.deltas(full: false, openForWriting: [path], appendOnly: [path])
        #expect(first.map(\.0.kind) == [.whole])
        for (delta, bytes) in first { FileDeltaLog.apply(delta, bytes, to: &standby) }
        files.acknowledged()

        // Growth within the partial last block, across block boundaries, to a block boundary
        // (block + 1000, + 200, + 3 blocks + 17, + block - 1217: 5 blocks), then past it.
        for (round, growth) in [200, 3 * block + 17, block - 1217, 5].enumerated() {
            let more = Self.bytes(growth, seed: UInt64(round + 2))
            let oldSize = UInt64(content.count)
            handle.write(Data(more))
            content += more
            files.freeze()
            let deltas = try files.deltas(full: false, openForWriting: [path], appendOnly: [path])
            #expect(deltas.map(\.0.kind) == [.append], "round \(round)")
            #expect(deltas.first?.0.offset == oldSize, "round \(round): shipped from the old end")
            #expect(deltas.first?.1 == more, "round \(round): exactly the bytes appended")
            for (delta, bytes) in deltas { FileDeltaLog.apply(delta, bytes, to: &standby) }
            files.acknowledged()
            #expect(standby?.content == content, "round \(round)")
            // The block hashes carried on equal those of the whole file read afresh.
            let fresh = DataFiles(directories: [])
            fresh.freeze()
            _ = try fresh.deltas(full: true, openForWriting: [path], appendOnly: [path])
            #expect(files.pendingState[path]?.blocks == fresh.pendingState[path]?.blocks, "round \(round)")
            #expect(files.pendingState[path]?.blocks.count == (content.count + block - 1) / block, "round \(round)")
        }

        // Unchanged: nothing read, nothing shipped.
        files.freeze()
        #expect(try files.deltas(full: false, openForWriting: [path], appendOnly: [path]).isEmpty)
    }

    /// A file not known to be append-only is compared block by block: a rewrite inside an old
    /// block ships that block, never the unchanged ones.
    @Test func rewrittenBlockIsShippedAsABlock() throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let directory = scratch.path
        let path = directory + "/data"
        let block = DataFiles.blockSize
        var content = Self.bytes(3 * block + 10, seed: 9)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(content)))
        let files = DataFiles(directories: [directory])
        var standby: MaterializedFile?
        files.freeze()
        for (delta, bytes) in try files.deltas(full: false, openForWriting: [], appendOnly: []) { FileDeltaLog.apply(delta, bytes, to: &standby) }
        files.acknowledged()
        content[block + 5] ^= 0xFF
        try Data(content).write(to: URL(fileURLWithPath: path))
        files.freeze()
        let deltas = try files.deltas(full: false, openForWriting: [], appendOnly: [])
        #expect(deltas.map(\.0.kind) == [.block])
        #expect(deltas.first?.0.offset == UInt64(block))
        #expect(deltas.first?.1.count == block)
        for (delta, bytes) in deltas { FileDeltaLog.apply(delta, bytes, to: &standby) }
        #expect(standby?.content == content)
    }

    /// A file written without `O_APPEND` (redis's AOF after a rewrite) is read in pieces of
    /// several blocks: changed blocks on both sides of a piece's end, adjacent ones joined, and
    /// growth from inside the old partial last block, each shipped exactly; the block hashes
    /// equal those of the whole file read afresh.
    @Test func blocksAcrossReadPiecesAreShippedExactly() throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let path = scratch.path + "/data"
        let block = DataFiles.blockSize
        let perPiece = DataFiles.readPiece / block
        var content = Self.bytes((perPiece + 4) * block + 10, seed: 3)
        #expect(FileManager.default.createFile(atPath: path, contents: Data(content)))
        let files = DataFiles(directories: [])
        var standby: MaterializedFile?
        files.freeze()
        for (delta, bytes) in try files.deltas(full: false, openForWriting: [path], appendOnly: []) { FileDeltaLog.apply(delta, bytes, to: &standby) }
        files.acknowledged()
        #expect(standby?.content == content)

        // Blocks 2 and 3 (adjacent), the last block of the first piece and the first of the
        // second, and growth of 2 blocks + 7 bytes past the partial last block.
        let oldSize = content.count
        for index in [2 * block + 1, 3 * block + 9, (perPiece - 1) * block, perPiece * block + 100] { content[index] ^= 0x5A }
        content += Self.bytes(2 * block + 7, seed: 4)
        try Data(content).write(to: URL(fileURLWithPath: path))
        files.freeze()
        let deltas = try files.deltas(full: false, openForWriting: [path], appendOnly: [])
        #expect(deltas.map(\.0.kind) == [.block, .block, .block])
        #expect(deltas.map(\.0.offset) == [UInt64(2 * block), UInt64((perPiece - 1) * block), UInt64((perPiece + 4) * block)])
        #expect(deltas.map(\.1.count) == [2 * block, 2 * block, content.count - (perPiece + 4) * block])
        #expect(deltas.allSatisfy { $0.0.size == UInt64(content.count) } && oldSize < content.count)
        for (delta, bytes) in deltas { FileDeltaLog.apply(delta, bytes, to: &standby) }
        files.acknowledged()
        #expect(standby?.content == content)
        let fresh = DataFiles(directories: [])
        fresh.freeze()
        _ = try fresh.deltas(full: true, openForWriting: [path], appendOnly: [])
        #expect(files.pendingState[path]?.blocks == fresh.pendingState[path]?.blocks)
        #expect(files.pendingState[path]?.blocks.count == (content.count + block - 1) / block)

        // Unchanged: nothing shipped.
        files.freeze()
        #expect(try files.deltas(full: false, openForWriting: [path], appendOnly: []).isEmpty)
    }
}
