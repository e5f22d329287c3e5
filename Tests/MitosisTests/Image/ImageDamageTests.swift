import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisModel

@Suite("Image damage")
struct ImageDamageTests {
    /// One small sound image: two runs, so that entry numbers mean something.
    static func sample(_ root: TempDirectory, _ name: String = "img") throws -> String {
        let dir = root.sub(name)
        try Synthetic.write(dir, mappings: [Synthetic.anonymous(0x10000, [.stored, .stored, nil, .stored])],
                            pages: [(0x10000, Synthetic.pattern(1, pages: 2)), (0x13000, Synthetic.pattern(2))])
        return dir
    }

    @Test("a flipped byte in each file is reported by verify, naming the file and entry")
    func flippedBytes() throws {
        let root = try TempDirectory()
        let cases: [(file: String, offset: Int, expected: (String) -> [ImageError])] = [
            ("manifest.json", 10, { [.checksumMismatch($0, file: "manifest.json", entry: nil)] }),
            ("pages.index", 40, { [.checksumMismatch($0, file: "pages.index", entry: nil)] }),
            // Offset 22 is the `d` of `id`: still printable once flipped.
            ("COMMIT", 22, { [.checksumMismatch($0, file: "COMMIT", entry: nil)] }),
            // Data offset 8192 is the second run's (written second): entry 1.
            ("pages.data", 8192 + 5, { [.checksumMismatch($0, file: "pages.data", entry: 1), .checksumMismatch($0, file: "pages.data", entry: nil)] }),
            ("pages.data", 100, { [.checksumMismatch($0, file: "pages.data", entry: 0), .checksumMismatch($0, file: "pages.data", entry: nil)] }),
        ]
        for (number, item) in cases.enumerated() {
            let dir = try Self.sample(root, "img\(number)")
            try Synthetic.flip(dir + "/" + item.file, at: item.offset)
            #expect(CheckpointImage.verifyChain(dir) == item.expected(dir), "\(item.file)")
        }
        // A byte that is not printable ASCII (e.g. a UUID letter flipped) makes the record malformed.
        let commit = try Self.sample(root, "commit")
        var bytes = try Synthetic.bytes(commit + "/COMMIT")
        bytes[30] = 0x01
        try Synthetic.overwrite(commit + "/COMMIT", bytes)
        #expect(CheckpointImage.verifyChain(commit) == [.malformed(commit, file: "COMMIT", detail: "not printable ASCII text")])
        // Reading through a damaged run fails with the same error instead of returning bad bytes.
        let dir = try Self.sample(root, "read")
        try Synthetic.flip(dir + "/pages.data", at: 9000)
        #expect(throws: ImageError.checksumMismatch(dir, file: "pages.data", entry: 1)) { try CheckpointImage.open(dir).read(address: 0x13000, length: 1) }
        #expect(try CheckpointImage.open(dir).read(address: 0x10000, length: 4) == Array(Synthetic.pattern(1)[0..<4]))
    }

    @Test("a truncated or missing file is reported as such")
    func truncation() throws {
        let root = try TempDirectory()
        let dir = try Self.sample(root)
        try Synthetic.overwrite(dir + "/pages.data", Array(try Synthetic.bytes(dir + "/pages.data")[0..<5000]))
        #expect(CheckpointImage.verifyChain(dir) == [.truncated(dir, file: "pages.data", detail: "5000 bytes, the commit record says 12288")])
        try FileManager.default.removeItem(atPath: dir + "/pages.index")
        #expect(CheckpointImage.verifyChain(dir) == [.truncated(dir, file: "pages.index", detail: "missing")])
        try FileManager.default.removeItem(atPath: dir + "/COMMIT")
        #expect(CheckpointImage.verifyChain(dir) == [.incomplete(dir, reason: "no commit record: the writer was interrupted")])
        #expect(CheckpointImage.verifyChain(root.path) == [.notAnImage(root.path)])
        #expect(CheckpointImage.verifyChain(dir + "/manifest.json") == [.notAnImage(dir + "/manifest.json")])
    }

    @Test("truncating any file at any length, or flipping any byte of the small files, never crashes the reader")
    func fuzz() throws {
        let root = try TempDirectory()
        let good = try Self.sample(root, "good")
        let files = ["COMMIT", "manifest.json", "pages.index", "pages.data"]
        var originals: [String: [UInt8]] = [:]
        for file in files { originals[file] = try Synthetic.bytes(good + "/" + file) }
        for file in files {
            let original = originals[file]!
            let lengths = file == "pages.data" ? [0, 1, 4095, 4096, 8191, 12287]
                : Array(stride(from: 0, to: original.count, by: file == "manifest.json" ? 5 : 1))
            for length in lengths {
                try Synthetic.overwrite(good + "/" + file, Array(original[0..<length]))
                #expect(!CheckpointImage.verifyChain(good).isEmpty, "\(file) cut at \(length)")
            }
            if file != "pages.data" {
                for offset in stride(from: 0, to: original.count, by: file == "manifest.json" ? 5 : 1) {
                    var bytes = original
                    bytes[offset] ^= 0xFF
                    try Synthetic.overwrite(good + "/" + file, bytes)
                    #expect(!CheckpointImage.verifyChain(good).isEmpty, "\(file) flipped at \(offset)")
                }
            }
            try Synthetic.overwrite(good + "/" + file, original)
        }
        #expect(CheckpointImage.verifyChain(good).isEmpty)
    }

    @Test("hostile content behind valid checksums is refused before any allocation it asks for")
    func hostileIndex() throws {
        let root = try TempDirectory()
        let dir = try Self.sample(root)
        let original = try Synthetic.bytes(dir + "/pages.index")
        func index(_ edit: (inout [UInt8]) -> Void) throws {
            var bytes = original
            edit(&bytes)
            let body = bytes.count - 8
            bytes.replaceSubrange(body..., with: withUnsafeBytes(of: Checksum.xxh64(bytes[0..<body]).littleEndian, Array.init))
            try Synthetic.overwrite(dir + "/pages.index", bytes)
            try Synthetic.resign(dir)
        }
        func put(_ value: UInt64, at offset: Int, in bytes: inout [UInt8]) {
            bytes.replaceSubrange(offset..<(offset + 8), with: withUnsafeBytes(of: value.littleEndian, Array.init))
        }
        try index { put(UInt64.max / 2, at: 16, in: &$0) }
        #expect(throws: ImageError.truncated(dir, file: "pages.index", detail: "header announces \(UInt64.max / 2) entries, file holds 64 bytes of entries")) {
            try CheckpointImage.open(dir)
        }
        try index { put(0x10000 + 1 << 40, at: 32 + 16, in: &$0) }
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entry 0 points past the end of pages.data")) { try CheckpointImage.open(dir) }
        try index { put(0x10001, at: 32, in: &$0) }
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entry 0 is not a page-aligned run of whole pages")) { try CheckpointImage.open(dir) }
        try index { put(UInt64.max - 4095, at: 32, in: &$0) }
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entry 0 is not a page-aligned run of whole pages")) { try CheckpointImage.open(dir) }
        try index { put(0x13000, at: 32, in: &$0) }
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entry 1 is out of order or overlaps entry 0")) { try CheckpointImage.open(dir) }
        try index { put(0, at: 64 + 16, in: &$0) }
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entries share bytes of pages.data")) { try CheckpointImage.open(dir) }
        try index { $0[8] = 4 }
        #expect(throws: ImageError.unsupportedVersion(dir, file: "pages.index", version: 4)) { try CheckpointImage.open(dir) }
        #expect(ImageError.unsupportedVersion(dir, file: "pages.index", version: 4).summary
                == "\(dir): unsupported format version 4 in pages.index (this mitosis reads versions 1–3)")
        #expect(ImageError.unsupportedVersion(dir, file: "manifest.json", version: 7).summary
                == "\(dir): unsupported format version 7 in manifest.json (this mitosis reads versions 1–2)")
        // Version 3 (compressed images) names its compression where version 2 has 0.
        try index { $0[8] = 3 }
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "unknown compression 0")) { try CheckpointImage.open(dir) }
        try index { _ in }
        #expect(CheckpointImage.verifyChain(dir).isEmpty)

        // A manifest claiming another version, or stored pages the index does not hold.
        let manifestPath = dir + "/manifest.json"
        let manifestText = String(decoding: try Synthetic.bytes(manifestPath), as: UTF8.self)
        try Synthetic.overwrite(manifestPath, Array(manifestText.replacingOccurrences(of: "\"format_version\" : 2", with: "\"format_version\" : 7").utf8))
        try Synthetic.resign(dir)
        #expect(throws: ImageError.unsupportedVersion(dir, file: "manifest.json", version: 7)) { try CheckpointImage.open(dir) }
        try Synthetic.overwrite(manifestPath, Array(manifestText.utf8))
        // Mark the page between the runs stored, though the index does not hold it.
        let manifest = try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: manifestPath)))
        var widened = manifest
        widened.mappings[0].pages[0].end = 0x13000
        try JSONOutput.encoder().encode(widened).write(to: URL(fileURLWithPath: manifestPath))
        try Synthetic.resign(dir)
        #expect(CheckpointImage.verifyChain(dir) == [.malformed(dir, file: "manifest.json", detail: "pages marked stored differ from pages.index at 0x10000")])
        try Synthetic.overwrite(manifestPath, Array("{\"format_version\": 1, \"id\": 5}".utf8))
        try Synthetic.resign(dir)
        #expect(CheckpointImage.verifyChain(dir) == [.malformed(dir, file: "manifest.json", detail: "bad value at id")])
    }

    @Test("a missing or replaced parent breaks the chain with a clear error")
    func parents() throws {
        let root = try TempDirectory()
        let (paths, manifests, _) = try Synthetic.chain(in: root)
        // Replace image 1 with an unrelated full image: its id differs from the one image 2 recorded.
        try FileManager.default.moveItem(atPath: paths[1], toPath: root.sub("1.saved"))
        #expect(CheckpointImage.verifyChain(paths[2]) == [.parentMissing(paths[2], parent: "../1")])
        let other = try Synthetic.write(paths[1], mappings: [Synthetic.anonymous(0x10000, [.neverTouched])], pages: [])
        #expect(CheckpointImage.verifyChain(paths[2]) == [.parentMismatch(paths[2], expected: manifests[1].id, found: other.id)])
        #expect(throws: ImageError.parentMismatch(paths[2], expected: manifests[1].id, found: other.id)) {
            try CheckpointImage.open(paths[2]).read(address: 0x10000, length: 1)
        }
        // The image alone still opens: only following the chain fails.
        #expect(try CheckpointImage.open(paths[2]).manifest == manifests[2])
    }

    @Test("never writes through a symbolic link or over an existing directory")
    func symlinks() throws {
        let root = try TempDirectory()
        let target = root.sub("elsewhere")
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: root.sub("link"), withDestinationPath: target)
        #expect(throws: ImageError.symlinkRefused(root.sub("link"))) {
            try Synthetic.write(root.sub("link"), mappings: [], pages: [])
        }
        try FileManager.default.createSymbolicLink(atPath: root.sub("dangling"), withDestinationPath: root.sub("nowhere"))
        #expect(throws: ImageError.symlinkRefused(root.sub("dangling"))) { try Synthetic.write(root.sub("dangling"), mappings: [], pages: []) }
        #expect(!FileManager.default.fileExists(atPath: root.sub("nowhere")))
        #expect(throws: ImageError.alreadyExists(target)) { try Synthetic.write(target, mappings: [], pages: []) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: target).isEmpty)
        // A symbolic link planted inside an image is not followed by the reader.
        let dir = try Self.sample(root)
        try FileManager.default.removeItem(atPath: dir + "/pages.data")
        try FileManager.default.createSymbolicLink(atPath: dir + "/pages.data", withDestinationPath: "/etc/passwd")
        #expect(CheckpointImage.verifyChain(dir) == [.symlinkRefused(dir + "/pages.data")])
    }

    @Test("an abandoned sink leaves an incomplete checkpoint; the existing chain stays valid")
    func abandoned() throws {
        let root = try TempDirectory()
        let (paths, manifests, _) = try Synthetic.chain(in: root)
        let header = CheckpointHeader(kind: .incremental, parent: ParentLink(path: "../2", id: manifests[2].id), sequence: 3, pid: 4242)
        do {
            let sink = DirectorySink(directory: root.sub("3"))
            try sink.begin(header)
            try sink.writePages(at: 0x10000, Synthetic.pattern(9))
            #expect(sink.partialPath == root.sub(".3.partial-\(header.id)"))
        }
        let partial = root.sub(".3.partial-\(header.id)")
        #expect(CheckpointImage.verifyChain(partial) == [.incomplete(partial, reason: "aborted: the sink was released before the checkpoint finished")])
        #expect(try Synthetic.bytes(partial + "/pages.data").isEmpty, "the page data is freed")
        #expect(!FileManager.default.fileExists(atPath: root.sub("3")))
        #expect(CheckpointImage.verifyChain(paths[2]).isEmpty)
    }
}
