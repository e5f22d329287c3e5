import Foundation
import Testing
@testable import MitosisImage

/// Early pages (`EarlyPageSink`): a full checkpoint streams its first round to the sink before
/// it knows which pages are final. Whatever the final pages then do with them — keep them all,
/// replace some, leave some out, add others — the image must be byte for byte the one a sink
/// given only the final pages writes.
@Suite struct EarlyPagesTests {
    static let page = Synthetic.page
    static let base: UInt64 = 0x4000_0000
    static let mappingPages = 2048

    /// One final step: early pages kept, or bytes handed over.
    enum Step {
        case keep(page: Int, count: Int)
        case write(page: Int, count: Int, seed: UInt8)
    }

    static func address(_ page: Int) -> UInt64 { base + UInt64(page * Self.page) }

    /// The early bytes of page `number` (and the pages after it): what round one copied.
    static func earlyBytes(_ number: Int, _ count: Int) -> [UInt8] {
        (0..<count).flatMap { Synthetic.pattern(UInt8(truncatingIfNeeded: number + $0), pages: 1) }
    }

    /// Streams `early` (first page, page count), then `steps`, into one image; the same final
    /// pages into another with `writePages` alone; and compares the two file by file.
    static func compare(early: [(Int, Int)], steps: [Step], in root: TempDirectory, _ name: String) throws {
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 4242, pageSize: page)
        var states = [PageState?](repeating: .neverTouched, count: mappingPages)
        var finalPages: [(UInt64, [UInt8])] = []
        for step in steps {
            switch step {
            case .keep(let first, let count):
                finalPages.append((address(first), earlyBytes(first, count)))
                for number in first..<first + count { states[number] = .stored }
            case .write(let first, let count, let seed):
                finalPages.append((address(first), Synthetic.pattern(seed, pages: count)))
                for number in first..<first + count { states[number] = .stored }
            }
        }
        let mapping = Synthetic.anonymous(base, states)
        let expected = try Synthetic.write(root.sub("\(name)-plain"), mappings: [mapping], pages: finalPages)

        let sink = DirectorySink(directory: root.sub("\(name)-early"))
        try sink.begin(header)
        // Page-aligned, as the checkpoint's stream buffers are: large pieces go straight to the device.
        let total = early.reduce(0) { $0 + $1.1 } * page
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, page), alignment: page)
        defer { buffer.deallocate() }
        var used = 0, mark: UInt64 = 0
        for (first, count) in early {
            let bytes = earlyBytes(first, count)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[used..<used + bytes.count])
            piece.copyBytes(from: bytes)
            mark = try sink.writeEarly(at: address(first), UnsafeRawBufferPointer(piece))
            used += bytes.count
        }
        try sink.waitEarly(mark)
        for (step, pages) in zip(steps, finalPages) {
            switch step {
            case .keep(let first, let count): try sink.keepEarly(at: address(first), length: count * page)
            case .write: try sink.writePages(at: pages.0, pages.1)
            }
        }
        let stored = try sink.finish(CheckpointManifest(header: header, tracking: "synthetic", mappings: [mapping], stats: expected.stats))
        #expect(stored.pageIndex == expected.pageIndex, "\(name)")
        #expect(stored.files == expected.files, "\(name)")
        for file in ["pages.index", "pages.data"] {
            #expect(try Synthetic.bytes(root.sub("\(name)-early/\(file)")) == Synthetic.bytes(root.sub("\(name)-plain/\(file)")), "\(name): \(file)")
        }
        #expect(CheckpointImage.verifyChain(root.sub("\(name)-early")).isEmpty, "\(name)")
    }

    // A 2 MiB piece (runs of 1 MiB), a 300-page piece, a 3-page piece (gathered), then 700 pages.
    static let early = [(0, 512), (512, 300), (900, 3), (1000, 700)]

    @Test func allKeptWithNewPagesAfter() throws {
        let root = try TempDirectory()
        try Self.compare(early: Self.early, steps: [.keep(page: 0, count: 812), .keep(page: 900, count: 3), .keep(page: 1000, count: 700),
                                                    .write(page: 850, count: 10, seed: 9), .write(page: 1900, count: 2, seed: 3)],
                         in: root, "kept")
    }

    @Test func pagesWrittenAfterTheirCopyAreReplacedInPlace() throws {
        let root = try TempDirectory()
        try Self.compare(early: Self.early, steps: [.keep(page: 0, count: 600), .write(page: 600, count: 1, seed: 1), .keep(page: 601, count: 211),
                                                    .keep(page: 900, count: 3), .write(page: 1000, count: 5, seed: 2), .keep(page: 1005, count: 695)],
                         in: root, "replaced")
        // The very first page, and the very last.
        try Self.compare(early: Self.early, steps: [.write(page: 0, count: 1, seed: 4), .keep(page: 1, count: 811), .keep(page: 900, count: 3),
                                                    .keep(page: 1000, count: 699), .write(page: 1699, count: 1, seed: 5)],
                         in: root, "ends")
    }

    @Test func pagesLeftOutMoveTheRestDown() throws {
        let root = try TempDirectory()
        try Self.compare(early: Self.early, steps: [.keep(page: 0, count: 100), .keep(page: 140, count: 672), .keep(page: 1000, count: 700),
                                                    .write(page: 1800, count: 4, seed: 6)],
                         in: root, "left-out")
        // Left out at the end: the data file is cut to the final pages.
        try Self.compare(early: Self.early, steps: [.keep(page: 0, count: 812), .keep(page: 900, count: 3), .keep(page: 1000, count: 500)],
                         in: root, "tail")
        try Self.compare(early: Self.early, steps: [], in: root, "none")
    }

    @Test func earlyPagesOutOfOrderAreRefused() throws {
        let root = try TempDirectory()
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 4242, pageSize: Self.page)
        let sink = DirectorySink(directory: root.sub("refused"))
        try sink.begin(header)
        try Self.earlyBytes(10, 4).withUnsafeBytes { _ = try sink.writeEarly(at: Self.address(10), $0) }
        try Self.earlyBytes(20, 4).withUnsafeBytes { _ = try sink.writeEarly(at: Self.address(20), $0) }
        #expect(throws: ImageError.self) { try Self.earlyBytes(5, 1).withUnsafeBytes { _ = try sink.writeEarly(at: Self.address(5), $0) } }

        let second = DirectorySink(directory: root.sub("backwards"))
        try second.begin(header)
        try Self.earlyBytes(10, 4).withUnsafeBytes { _ = try second.writeEarly(at: Self.address(10), $0) }
        try Self.earlyBytes(20, 4).withUnsafeBytes { _ = try second.writeEarly(at: Self.address(20), $0) }
        // Page 20 first: the bytes of page 10 would then be read from where page 20 went.
        try second.keepEarly(at: Self.address(20), length: 4 * Self.page)
        #expect(throws: ImageError.self) { try second.keepEarly(at: Self.address(10), length: 4 * Self.page) }
        // Pages never handed over early cannot be kept.
        let third = DirectorySink(directory: root.sub("unknown"))
        try third.begin(header)
        try Self.earlyBytes(10, 4).withUnsafeBytes { _ = try third.writeEarly(at: Self.address(10), $0) }
        #expect(throws: ImageError.self) { try third.keepEarly(at: Self.address(30), length: Self.page) }
    }
}
