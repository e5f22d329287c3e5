import Foundation
import Testing
@testable import MitosisImage
@testable import MitosisModel

@Suite("images CLI")
struct ImagesCommandTests {
    @Test("show prints the chain; --json includes the pages stored in the image itself")
    func show() async throws {
        let root = try TempDirectory()
        let (paths, manifests, _) = try Synthetic.chain(in: root)
        let text = try await ToolRun(ToolRun.mitosis, ["images", "show", paths[2]])
        #expect(text.status == 0)
        #expect(text.standardOutput.contains("  id          \(manifests[2].id)\n"))
        #expect(text.standardOutput.contains("  kind        incremental, sequence 2, parent ../1 (\(manifests[1].id))\n"))
        #expect(text.standardOutput.contains("  pages       1 stored here in 1 run(s), 4096 bytes\n"))
        #expect(text.standardOutput.contains("  chain       2:1 <- 1:2 <- 0:4  (sequence:pages, newest first; 7 pages in all)\n"))
        #expect(text.standardOutput.contains("    10000-20000 rw-p anonymous  stored 1, inherited 4, never_touched 11\n"))

        let json = try await ToolRun(ToolRun.mitosis, ["images", "show", "--json", paths[1]])
        #expect(json.status == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.standardOutput.utf8)) as? [String: Any])
        #expect(object["pages"] as? Int == 2)
        #expect((object["manifest"] as? [String: Any])?["id"] as? String == manifests[1].id)
        #expect((object["chain"] as? [[String: Any]])?.map { $0["pages"] as? Int } == [2, 4])
        let decoded = try JSONOutput.decoder().decode(CheckpointManifest.self,
                                                      from: JSONSerialization.data(withJSONObject: object["manifest"]!))
        #expect(decoded == manifests[1])
    }

    @Test("verify exits 0 on a sound chain and 1 with one line per problem")
    func verify() async throws {
        let root = try TempDirectory()
        let (paths, _, _) = try Synthetic.chain(in: root)
        let good = try await ToolRun(ToolRun.mitosis, ["images", "verify", paths[2]])
        #expect(good.status == 0)
        #expect(good.standardOutput == "ok: \(paths[2]): 3 image(s), 7 page(s) verified\n")
        try Synthetic.flip(paths[0] + "/pages.data", at: 3)
        let bad = try await ToolRun(ToolRun.mitosis, ["images", "verify", paths[2]])
        #expect(bad.status == 1)
        #expect(bad.standardOutput.isEmpty)
        #expect(bad.standardError == "mitosis: \(paths[0]): checksum mismatch in pages.data at entry 0\nmitosis: \(paths[0]): checksum mismatch in pages.data\n")
    }

    @Test("show and verify say incomplete for a partial checkpoint")
    func incomplete() async throws {
        let root = try TempDirectory()
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 1)
        let sink = DirectorySink(directory: root.sub("x"))
        try sink.begin(header)
        sink.abort(reason: "target exited")
        let partial = root.sub(".x.partial-\(header.id)")
        let show = try await ToolRun(ToolRun.mitosis, ["images", "show", partial])
        #expect(show.status == 1)
        #expect(show.standardError == "mitosis: \(partial): incomplete checkpoint (aborted: target exited)\n")
        let verify = try await ToolRun(ToolRun.mitosis, ["images", "verify", partial])
        #expect(verify.status == 1)
        #expect(verify.standardError == "mitosis: \(partial): incomplete checkpoint (aborted: target exited)\n")
    }

    @Test("read writes the reconstructed bytes to standard output")
    func read() async throws {
        let root = try TempDirectory()
        let (paths, _, expected) = try Synthetic.chain(in: root)
        let out = root.sub("out")
        // Raw bytes: capture through a file, not a String.
        let run = try await ToolRun("/bin/sh", ["-c", "\"$0\" images read \"$1\" --addr 0x10ffe --len 8200 > \"$2\"", ToolRun.mitosis, paths[2], out])
        #expect(run.status == 0)
        #expect(try Synthetic.bytes(out) == Array(expected[0xFFE..<(0xFFE + 8200)]))
        let unmapped = try await ToolRun(ToolRun.mitosis, ["images", "read", paths[2], "--addr", "0x5000", "--len", "1"])
        #expect(unmapped.status == 1)
        #expect(unmapped.standardError == "mitosis: address 0x5000 is not mapped in this checkpoint\n")
        let bad = try await ToolRun(ToolRun.mitosis, ["images", "read", paths[2], "--addr", "zz", "--len", "1"])
        #expect(bad.status != 0)
    }
}
