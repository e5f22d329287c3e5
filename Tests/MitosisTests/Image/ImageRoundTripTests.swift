import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel

@Suite("Image round trip")
struct ImageRoundTripTests {
    @Test("a full image reads back byte for byte, with mode 0600 files in a 0700 directory")
    func fullImage() throws {
        let root = try TempDirectory()
        let dir = root.sub("full")
        let mapping = Synthetic.anonymous(0x40_0000, [.stored, .stored, .stored, .neverTouched, .stored])
        let written = try Synthetic.write(dir, mappings: [mapping], pages: [
            (0x40_4000, Synthetic.pattern(9)), (0x40_0000, Synthetic.pattern(7, pages: 3)),
        ])
        #expect(written.pageIndex == PageIndexSummary(runs: 2, pages: 4, bytes: 16384))
        #expect(Set(written.files.keys) == ["pages.index", "pages.data"])

        let image = try CheckpointImage.open(dir)
        #expect(image.manifest == written)
        #expect(image.runs.map(\.address) == [0x40_0000, 0x40_4000])
        #expect(image.runs.map(\.length) == [12288, 4096])
        #expect(image.runs.map(\.dataOffset) == [4096, 0])
        #expect(image.verify().isEmpty)
        let expected = Synthetic.pattern(7, pages: 3) + [UInt8](repeating: 0, count: 4096) + Synthetic.pattern(9)
        #expect(try image.read(address: 0x40_0000, length: 5 * 4096) == expected)
        #expect(try image.read(address: 0x40_0FFE, length: 4) == Array(expected[0xFFE..<0x1002]))

        let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(names == ["COMMIT", "manifest.json", "pages.data", "pages.index"])
        for name in names {
            #expect(try Kernel.status(dir + "/" + name).permissions == 0o600, "\(name)")
        }
        #expect(try Kernel.status(dir).permissions == 0o700)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.path) == ["full"], "no partial directory left")
    }

    @Test("reads through a three-deep chain: newest image holding a page wins, untouched pages are zeros")
    func chain() throws {
        let root = try TempDirectory()
        let (paths, manifests, expected) = try Synthetic.chain(in: root)
        let chain = try CheckpointImage.open(paths[2]).chain()
        #expect(chain.images.map(\.manifest.id) == manifests.reversed().map(\.id))
        #expect(chain.images.map(\.storedPages) == [1, 2, 4])
        #expect(try chain.read(address: 0x10000, length: 9 * 4096) == expected)
        #expect(try chain.read(address: 0x11800, length: 0x1000) == Array(expected[0x1800..<0x2800]))
        // The middle image sees its own state: page 2 is still the full image's.
        let middle = try CheckpointImage.open(paths[1]).read(address: 0x12000, length: 4096)
        #expect(middle == Array(Synthetic.pattern(1, pages: 4)[0x2000..<0x3000]))
        #expect(CheckpointImage.verifyChain(paths[2]).isEmpty)
    }

    @Test("addresses outside mappings, pages without state and clean file pages")
    func readSemantics() throws {
        let root = try TempDirectory()
        let file = root.sub("backing")
        let content = Synthetic.pattern(5, pages: 1) + Array(Synthetic.pattern(6)[0..<100])
        try Synthetic.overwrite(file, content)
        let identity = MappedFileIdentity.capture(path: file, inode: try Kernel.status(file).inode, offset: 0x1000, length: 0x3000, pageSize: 4096)
        #expect(identity?.chunkXxh64.count == 1)
        let fileMapping = CheckpointMapping(start: 0x80000, end: 0x83000, perms: "r--p", offset: 0x1000, path: file, kind: "file",
                                            pages: Synthetic.ranges(from: 0x80000, [.cleanFile, .cleanFile]), file: identity)
        let dir = root.sub("img")
        try Synthetic.write(dir, mappings: [Synthetic.anonymous(0x10000, [.stored, nil]), fileMapping],
                            pages: [(0x10000, Synthetic.pattern(1))])
        let image = try CheckpointImage.open(dir)
        // File offset 0x1000 holds the 100-byte tail; the rest of that page reads as zeros.
        let tail: [UInt8] = Array(content[4096...]) + [UInt8](repeating: 0, count: 3996)
        #expect(try image.read(address: 0x80000, length: 4096) == tail)
        #expect(throws: ImageError.notStored(address: 0x81000, detail: "clean_file page lies past the end of \(file)")) {
            try image.read(address: 0x81000, length: 1)
        }
        #expect(throws: ImageError.notStored(address: 0x82000, detail: "no page state is recorded for it in mapping \(file)")) {
            try image.read(address: 0x82000, length: 1)
        }
        #expect(throws: ImageError.notStored(address: 0x11000, detail: "no page state is recorded for it in mapping [anonymous]")) {
            try image.read(address: 0x10FFF, length: 2)
        }
        #expect(throws: ImageError.notMapped(address: 0x12000)) { try image.read(address: 0x12000, length: 1) }
        #expect(try image.read(address: 0x10000, length: 0) == [])
        // Without the file's identity (images written before it was recorded) clean_file pages are not read.
        let unidentified = root.sub("unidentified")
        var bare = fileMapping
        bare.file = nil
        try Synthetic.write(unidentified, mappings: [bare], pages: [])
        #expect(throws: ImageError.notStored(address: 0x80000, detail: "clean_file page of \(file), which is not read: "
                                             + "the image records no identity for the file (written by a Mitosis that did not), so its bytes cannot be trusted")) {
            try CheckpointImage.open(unidentified).read(address: 0x80000, length: 1)
        }
    }

    @Test("contiguous writes join one run, split every 256 pages")
    func runs() throws {
        let root = try TempDirectory()
        let dir = root.sub("big")
        let pages = 600
        let bytes = Synthetic.pattern(3, pages: pages)
        try Synthetic.write(dir, mappings: [Synthetic.anonymous(0x100000, .init(repeating: .stored, count: pages))],
                            pages: [(0x100000, Array(bytes[..<(100 * 4096)])), (0x100000 + 100 * 4096, Array(bytes[(100 * 4096)...]))])
        let image = try CheckpointImage.open(dir)
        #expect(image.runs.map(\.length) == [UInt64(256 * 4096), UInt64(256 * 4096), UInt64(88 * 4096)])
        #expect(try image.read(address: 0x100000, length: bytes.count) == bytes)
    }

    @Test("the sink refuses misuse with one-line errors")
    func sinkMisuse() throws {
        let root = try TempDirectory()
        let sink = DirectorySink(directory: root.sub("x"))
        #expect(throws: ImageError.sinkState("pages or finish before begin")) { try sink.writePages(at: 0, [UInt8](repeating: 0, count: 4096)) }
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 1, pageSize: 4096)
        try sink.begin(header)
        #expect(throws: ImageError.invalidPages("address 0x10 is not page-aligned")) { try sink.writePages(at: 0x10, [UInt8](repeating: 0, count: 4096)) }
        #expect(throws: ImageError.invalidPages("100 bytes at 0x1000 is not a whole number of 4096-byte pages")) {
            try sink.writePages(at: 0x1000, [UInt8](repeating: 0, count: 100))
        }
        try sink.writePages(at: 0x1000, [UInt8](repeating: 1, count: 8192))
        try sink.writePages(at: 0x2000, [UInt8](repeating: 2, count: 4096))
        #expect(throws: ImageError.invalidPages("runs at 0x1000 and 0x2000 overlap")) {
            try sink.finish(CheckpointManifest(header: header, tracking: "t", mappings: []))
        }
        #expect(throws: ImageError.incomplete(root.sub(".x.partial-\(header.id)"), reason: "aborted: invalid pages: runs at 0x1000 and 0x2000 overlap")) {
            try CheckpointImage.open(root.sub(".x.partial-\(header.id)"))
        }
        #expect(throws: ImageError.sinkState("an incremental checkpoint needs a parent")) {
            try DirectorySink(directory: root.sub("y")).begin(CheckpointHeader(kind: .incremental, sequence: 1, pid: 1))
        }
    }

    @Test("an unsynced image (no fsync) holds byte for byte the files of a synced one")
    func unsynced() throws {
        let root = try TempDirectory()
        let mappings = [Synthetic.anonymous(0x10000, [.stored, .stored, nil, .stored])]
        let pages = [(UInt64(0x10000), Synthetic.pattern(1, pages: 2)), (UInt64(0x13000), Synthetic.pattern(2))]
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 4242, pageSize: Synthetic.page)
        for (name, synced) in [("synced", true), ("unsynced", false)] {
            let sink = DirectorySink(directory: root.sub(name), synced: synced)
            try sink.begin(header)
            for (address, bytes) in pages { try sink.writePages(at: address, bytes) }
            try sink.finish(CheckpointManifest(header: header, tracking: "synthetic", mappings: mappings, stats: CheckpointStats()))
        }
        for file in ["manifest.json", "pages.index", "pages.data", "COMMIT"] {
            #expect(try Synthetic.bytes(root.sub("synced/" + file)) == Synthetic.bytes(root.sub("unsynced/" + file)), "\(file)")
        }
        #expect(CheckpointImage.verifyChain(root.sub("unsynced")).isEmpty)
    }
}
