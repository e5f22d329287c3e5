import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel

/// Compressed images (`DirectorySink(compression: .zstd)`, `mitosis dump --compress`): each run a
/// zstd frame, or its bytes where the frame is no smaller; read back, verified and refused when
/// hostile like any other image.
@Suite("Compressed images")
struct CompressedImageTests {
    /// 300 patterned pages (two runs: 256 + 44), 2 random ones (incompressible), 1 patterned one.
    static let base: UInt64 = 0x100000
    static func pages() -> [(UInt64, [UInt8])] {
        var random = SystemRandomNumberGenerator()
        let noise = (0..<(2 * Synthetic.page)).map { _ in UInt8.random(in: 0...255, using: &random) }
        return [(base, Synthetic.pattern(1, pages: 300)), (base + 0x200000, noise), (base + 0x300000, Synthetic.pattern(9))]
    }
    static func mappings() -> [CheckpointMapping] {
        [Synthetic.anonymous(base, [PageState?](repeating: .stored, count: 300)),
         Synthetic.anonymous(base + 0x200000, [.stored, .stored]), Synthetic.anonymous(base + 0x300000, [.stored])]
    }

    @Test("a compressed image reads back every page, frames where smaller and raw bytes where not, with the same runs and checksums")
    func roundTrip() throws {
        let root = try TempDirectory()
        let pages = Self.pages()
        let plain = try Synthetic.write(root.sub("plain"), mappings: Self.mappings(), pages: pages)
        let packed = try Synthetic.write(root.sub("packed"), mappings: Self.mappings(), pages: pages,
                                         sink: DirectorySink(directory: root.sub("packed"), compression: .zstd))
        #expect(packed.pageIndex.pages == 303 && packed.pageIndex.runs == 4 && plain.pageIndex.runs == 4)
        let image = try CheckpointImage.open(root.sub("packed"))
        let reference = try CheckpointImage.open(root.sub("plain"))
        #expect(image.compression == .zstd && reference.compression == nil)
        // Same runs, same checksums (of the pages, not of the frames); only where they are differs.
        #expect(image.runs.map { [$0.address, $0.length, $0.checksum] } == reference.runs.map { [$0.address, $0.length, $0.checksum] })
        #expect(image.runs.map(\.isCompressed) == [true, true, false, true])
        let size = try Kernel.status(root.sub("packed/pages.data")).size
        #expect(UInt64(size) == packed.pageIndex.bytes && size < 3 * Synthetic.page + 40_000, "\(size) bytes")
        // Version 3 of pages.index, compression 1 (zstd); the uncompressed image keeps version 2.
        #expect(Array(try Synthetic.bytes(root.sub("packed/pages.index"))[8..<12]) == [3, 0, 0, 0])
        #expect(Array(try Synthetic.bytes(root.sub("plain/pages.index"))[8..<12]) == [2, 0, 0, 0])
        for (address, bytes) in pages {
            #expect(try image.read(address: address, length: bytes.count) == bytes)
        }
        // Across a run's end, and the last page alone.
        #expect(try image.read(address: Self.base + 255 * 4096, length: 8192) == Array(pages[0].1[(255 * 4096)..<(257 * 4096)]))
        #expect(CheckpointImage.verifyChain(root.sub("packed")).isEmpty)
    }

    @Test("an incremental compressed image over an uncompressed parent reads the whole chain")
    func chain() throws {
        let root = try TempDirectory()
        let full = try Synthetic.write(root.sub("0"), mappings: [Synthetic.anonymous(Self.base, [.stored, .stored])],
                                       pages: [(Self.base, Synthetic.pattern(1, pages: 2))])
        try Synthetic.write(root.sub("1"), kind: .incremental, parent: ("../0", full),
                            mappings: [Synthetic.anonymous(Self.base, [.inherited, .stored])], pages: [(Self.base + 4096, Synthetic.pattern(5))],
                            sink: DirectorySink(directory: root.sub("1"), compression: .zstd))
        #expect(try CheckpointImage.open(root.sub("1")).read(address: Self.base, length: 8192) == Synthetic.pattern(1) + Synthetic.pattern(5))
        #expect(CheckpointImage.verifyChain(root.sub("1")).isEmpty)
    }

    /// A compressed image of one run of `pages` patterned pages.
    static func single(_ root: TempDirectory, _ name: String, pages: Int = 2) throws -> String {
        let dir = root.sub(name)
        try Synthetic.write(dir, mappings: [Synthetic.anonymous(base, [PageState?](repeating: .stored, count: pages))],
                            pages: [(base, Synthetic.pattern(3, pages: pages))], sink: DirectorySink(directory: dir, compression: .zstd))
        return dir
    }

    @Test("mitosis dump --compress writes a smaller zstd image that shows, verifies and reads")
    func dumpCommand() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let root = try TempDirectory()
        for (name, flags) in [("plain", [String]()), ("packed", ["--compress"])] {
            let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(child.pid), "--images", root.sub(name)] + flags)
            #expect(dump.status == 0, "\(dump.standardError)")
            let verify = try await ToolRun(ToolRun.mitosis, ["images", "verify", root.sub(name)])
            #expect(verify.status == 0, "\(verify.standardError)")
        }
        let show = try await ToolRun(ToolRun.mitosis, ["images", "show", root.sub("packed")])
        #expect(show.standardOutput.contains("-compressed, "), "\(show.standardOutput)")
        let json = try await ToolRun(ToolRun.mitosis, ["images", "show", root.sub("packed"), "--json"])
        #expect(json.standardOutput.contains("\"compression\" : \"zstd\"") || json.standardOutput.contains("\"compression\":\"zstd\""))
        let packed = try CheckpointImage.open(root.sub("packed")), plain = try CheckpointImage.open(root.sub("plain"))
        #expect(packed.compression == .zstd && packed.manifest.pageIndex.bytes < plain.manifest.pageIndex.bytes)
        // Every stored page reads back (decompressed, checked against its run's checksum). Not
        // compared with the other image: the live child's stack changes between the two dumps
        // (byte-exactness is the restore test's: RestoreTests.restoreFromACompressedChain).
        for run in packed.runs {
            #expect(try packed.read(address: run.address, length: Int(run.length)).count == Int(run.length))
        }
    }

    @Test("mitosis dump --no-sync writes an image that verifies; --no-sync with --tree is refused")
    func noSync() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let root = try TempDirectory()
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(child.pid), "--images", root.sub("img"), "--no-sync", "--compress"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try await ToolRun(ToolRun.mitosis, ["images", "verify", root.sub("img")]).status == 0)
        let tree = try await ToolRun(ToolRun.mitosis, ["dump", String(child.pid), "--images", root.sub("tree"), "--no-sync", "--tree"])
        #expect(tree.status != 0 && tree.standardError.contains("--no-sync is for one process"), "\(tree.standardError)")
        #expect(!FileManager.default.fileExists(atPath: root.sub("tree")))
    }

    @Test("a damaged frame is one error naming the entry, from read and from verify, at every byte")
    func damagedFrame() throws {
        let root = try TempDirectory()
        let sound = try Self.single(root, "sound")
        let frame = try Synthetic.bytes(sound + "/pages.data")
        for offset in 0..<frame.count {
            let dir = try Self.single(root, "img\(offset)")
            try Synthetic.flip(dir + "/pages.data", at: offset)
            let image = try CheckpointImage.open(dir)
            let refused: [ImageError] = [
                .malformed(dir, file: "pages.data", detail: "entry 0 is not a zstd frame of 8192 bytes (damaged compressed data)"),
                .checksumMismatch(dir, file: "pages.data", entry: 0),
            ]
            #expect(throws: ImageError.self) { try image.read(address: Self.base, length: 1) }
            do {
                _ = try image.read(address: Self.base, length: 8192)
            } catch {
                #expect(refused.contains(error), "byte \(offset): \(error)")
            }
            let problems = CheckpointImage.verifyChain(dir)
            #expect(problems.count == 2 && refused.contains(problems[0]) && problems[1] == .checksumMismatch(dir, file: "pages.data", entry: nil),
                    "byte \(offset): \(problems)")
        }
    }

    /// Replaces the one run's frame of `dir` by `frame`, keeping the index's claim of the run's
    /// length, and reseals the index, manifest and commit record around it.
    static func replaceFrame(_ dir: String, with frame: [UInt8], storedLength: UInt64? = nil) throws {
        let manifest = try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: dir + "/manifest.json")))
        var runs = try CheckpointImage.open(dir).runs
        runs[0].storedLength = storedLength ?? UInt64(frame.count)
        try Synthetic.overwrite(dir + "/pages.data", frame)
        try Synthetic.overwrite(dir + "/pages.index", ImageFormat.encodeIndex(pageSize: Synthetic.page, runs: runs, compression: .zstd))
        var edited = manifest
        edited.pageIndex.bytes = UInt64(frame.count)
        try JSONOutput.encoder().encode(edited).write(to: URL(fileURLWithPath: dir + "/manifest.json"))
        try Synthetic.resign(dir)
    }

    static func frame(of bytes: [UInt8]) throws -> [UInt8] {
        let compressor = try ZstdCompressor()
        var out = [UInt8](repeating: 0, count: bytes.count + 1024)
        let count = bytes.withUnsafeBytes { input in out.withUnsafeMutableBytes { compressor.compress(input, into: $0) } }
        return Array(out[..<count!])
    }

    @Test("a sound frame of another length than its run (longer, shorter, empty content) is refused with one error, nothing read past the run")
    func lyingLength() async throws {
        let root = try TempDirectory()
        // The run holds 2 pages; the frames decompress to 3 pages, 1 page and 0 bytes.
        for (number, content) in [Synthetic.pattern(3, pages: 3), Synthetic.pattern(3), []].enumerated() {
            let dir = try Self.single(root, "img\(number)")
            try Self.replaceFrame(dir, with: try Self.frame(of: content))
            let image = try CheckpointImage.open(dir)
            let expected = ImageError.malformed(dir, file: "pages.data", detail: "entry 0 is not a zstd frame of 8192 bytes (damaged compressed data)")
            #expect(throws: expected) { try image.read(address: Self.base, length: 8192) }
            #expect(CheckpointImage.verifyChain(dir) == [expected])
            let run = try await ToolRun(ToolRun.mitosis, ["images", "read", dir, "--addr", "0x100000", "--len", "8192"])
            #expect(run.status == 1 && run.standardError == "mitosis: \(expected)\n", "\(run.standardError)")
        }
    }

    @Test("an index entry storing more bytes than its run, or none, is refused at open")
    func storedLengths() throws {
        let root = try TempDirectory()
        for (number, stored) in [UInt64(8193), 0].enumerated() {
            let dir = try Self.single(root, "img\(number)")
            let frame = try Synthetic.bytes(dir + "/pages.data")
            let padded = stored > 0 ? frame + [UInt8](repeating: 0, count: Int(stored) - frame.count) : frame
            try Self.replaceFrame(dir, with: padded, storedLength: stored)
            #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entry 0 stores \(stored) bytes for a run of 8192")) {
                try CheckpointImage.open(dir)
            }
        }
        // An unknown compression code in a version 3 header.
        let dir = try Self.single(root, "code")
        try Synthetic.setIndexCompression(dir, 2)
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "unknown compression 2")) { try CheckpointImage.open(dir) }
    }
}
