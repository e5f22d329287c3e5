import Foundation
import Testing
@testable import MitosisImage
@testable import MitosisModel

/// A standby writes the manifest it received, relinked into its own chain (`ManifestRelink`,
/// `DirectorySink.finish(_:encoded:)`): the bytes written decode to the manifest it checked.
@Suite("Manifest relink")
struct ManifestRelinkTests {
    private func manifest(kind: CheckpointKind, parent: ParentLink?, sequence: Int) -> CheckpointManifest {
        let header = CheckpointHeader(kind: kind, parent: parent, sequence: sequence, pid: 4242, pageSize: Synthetic.page)
        return CheckpointManifest(header: header, tracking: "synthetic",
                                  mappings: [Synthetic.anonymous(0x40_0000, [.stored, .inherited, .neverTouched])])
    }

    @Test("the chain link is replaced, every other byte kept; what is written decodes to the manifest relinked")
    func relinks() throws {
        let sent = manifest(kind: .incremental, parent: ParentLink(path: "/primary/x", id: "A\"\\B"), sequence: 9)
        let bytes = try JSONOutput.bytes(sent, pretty: false)
        let link = ParentLink(path: "../000000000041", id: "A\"\\B")
        let relinked = try #require(ManifestRelink.relink(bytes, parent: link, sequence: 3))
        var expected = sent
        expected.parent = link
        expected.sequence = 3
        #expect(try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(relinked)) == expected)
        #expect(relinked.count - bytes.count == link.path.count - "/primary/x".count)
        // Pretty JSON (spaces, newlines) too; a full manifest gains no parent, or one inserted.
        let base = manifest(kind: .full, parent: nil, sequence: 0)
        let pretty = Array(try JSONOutput.encoder().encode(base))
        let full = try #require(ManifestRelink.relink(pretty, parent: nil, sequence: 0))
        #expect(try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(full)) == base)
        #expect(try ManifestRelink.summary(full) == CheckpointManifest(header: base.header, tracking: "synthetic", mappings: []))
        let inserted = try #require(ManifestRelink.relink(pretty, parent: link, sequence: 5))
        #expect(try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(inserted)).parent == link)
    }

    @Test("refuses what a decoder could read another way: escaped or repeated keys, not one object")
    func refuses() throws {
        let bytes = try JSONOutput.bytes(manifest(kind: .full, parent: nil, sequence: 0), pretty: false)
        let text = String(decoding: bytes, as: UTF8.self)
        for hostile in [
            text.replacingOccurrences(of: "\"sequence\":0", with: "\"\\u0073equence\":0"),
            text.replacingOccurrences(of: "\"sequence\":0", with: "\"sequence\":0,\"sequence\":7"),
            text + "{}", "[" + text + "]", "", "{", "{\"sequence\":", "{\"sequence\":1,", String(text.dropLast()),
            "{\"a\":\"\\", "{\"a\":[\"]\"", "{\"sequence\":1}x",
        ] {
            #expect(ManifestRelink.relink(Array(hostile.utf8), parent: nil, sequence: 1) == nil, "\(hostile.prefix(60))")
        }
        // Brackets and quotes inside strings do not end a value.
        #expect(ManifestRelink.relink(Array("{\"a\":[1,{\"b\":\"}\\\"]\"}],\"sequence\":2}".utf8), parent: nil, sequence: 1)
            == Array("{\"a\":[1,{\"b\":\"}\\\"]\"}],\"sequence\":1}".utf8))
    }

    @Test("a sink given the bytes writes them; pages that differ from the manifest's summary commit nothing")
    func sinkWritesTheBytes() throws {
        let root = try TempDirectory()
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 4242, pageSize: Synthetic.page)
        let mapping = Synthetic.anonymous(0x40_0000, [.stored, .stored])
        // What the primary's sink made of the same pages: the draft with summary and digests.
        let reference = try Synthetic.write(root.sub("primary"), mappings: [mapping], pages: [(0x40_0000, Synthetic.pattern(3, pages: 2))])
        var draft = CheckpointManifest(header: header, tracking: "synthetic", mappings: [mapping], stats: reference.stats)
        draft.pageIndex = reference.pageIndex
        draft.files = reference.files
        let bytes = try JSONOutput.bytes(draft, pretty: false)

        let sink = DirectorySink(directory: root.sub("standby"))
        try sink.begin(header)
        try sink.writePages(at: 0x40_0000, Synthetic.pattern(3, pages: 2))
        #expect(try sink.finish(draft, encoded: bytes) == draft)
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: root.sub("standby/manifest.json")))) == bytes)
        let image = try CheckpointImage.open(root.sub("standby"))
        #expect(image.manifest == draft)
        #expect(image.verify().isEmpty)

        let other = DirectorySink(directory: root.sub("wrong"))
        var wrongHeader = header
        wrongHeader.id = UUID().uuidString
        try other.begin(wrongHeader)
        try other.writePages(at: 0x40_0000, Synthetic.pattern(4, pages: 2))
        var wrong = draft
        wrong.id = wrongHeader.id
        #expect(throws: ImageError.self) { try other.finish(wrong, encoded: try JSONOutput.bytes(wrong, pretty: false)) }
        #expect(!FileManager.default.fileExists(atPath: root.sub("wrong")), "nothing committed")
        let left = try FileManager.default.contentsOfDirectory(atPath: root.path).filter { $0.hasPrefix(".wrong.partial-") }
        #expect(left.count == 1)
        #expect(FileManager.default.fileExists(atPath: root.path + "/" + left[0] + "/INCOMPLETE"), "the marker says why")
    }
}
