import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisModel

/// `protect` encodes each epoch's manifest with `JSONWriter` and the memo it keeps between
/// epochs (`JSONMemo`): the bytes sent must be exactly those Foundation's `JSONEncoder` writes
/// (what the standby relinks and writes, and every reader decodes), whatever changed since the
/// epoch before. Checked on the manifests of a real process checkpointed again and again, and on
/// those manifests changed in every way an epoch changes them.
@Suite("Manifest encoding: JSONWriter with a memo")
struct ManifestEncodingTests {
    /// Foundation's compact bytes, what protect sent before `JSONWriter`.
    static func foundation(_ manifest: CheckpointManifest) throws -> [UInt8] {
        Array(try JSONOutput.encoder(pretty: false).encode(manifest))
    }

    /// Encodes `manifests` one after the other with one memo, and expects each to be
    /// Foundation's bytes and to decode to itself.
    static func expectMemoized(_ manifests: [CheckpointManifest], memo: JSONMemo = JSONMemo(),
                               sourceLocation: SourceLocation = #_sourceLocation) throws {
        for (index, manifest) in manifests.enumerated() {
            let bytes = try JSONWriter(pretty: false, memo: memo).encode(manifest)
            let expected = try foundation(manifest)
            if bytes != expected {
                let at = zip(bytes, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(bytes.count, expected.count)
                Issue.record("manifest \(index): first difference at byte \(at) of \(expected.count)/\(bytes.count): …\(String(decoding: bytes[max(0, at - 60)..<min(bytes.count, at + 60)], as: UTF8.self))…",
                             sourceLocation: sourceLocation)
            }
            #expect(try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(bytes)) == manifest, sourceLocation: sourceLocation)
            // Pretty, as `dump` writes `manifest.json` (`JSONOutput.bytes`), without a memo.
            #expect(try JSONOutput.bytes(manifest) == Array(try JSONOutput.encoder().encode(manifest)), sourceLocation: sourceLocation)
        }
    }

    /// The `restore` scenario (threads, descriptors, a restore record) checkpointed once whole
    /// and four times incrementally while it runs: the manifests of its epochs.
    static func realManifests() async throws -> [CheckpointManifest] {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/scenario.log"
        let child = try await ScenarioProcess("restore", [log, "8", "2", "120"])
        defer { child.stop() }
        try await child.send("detach")
        kill(child.pid, SIGUSR1)
        _ = try await CheckpointedScenario.awaitCheck(1, in: log)
        let session = try await CheckpointSession(pid: child.pid)
        var manifests: [CheckpointManifest] = []
        do {
            for sequence in 0..<5 {
                let sink = DirectorySink(directory: scratch.path + "/\(sequence)")
                let result = try await session.checkpoint(to: sink, parent: sequence == 0 ? nil : .previous(path: "../\(sequence - 1)"))
                manifests.append(result.manifest)
                try await Task.sleep(for: .milliseconds(30))
            }
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        return manifests
    }

    @Test("a real process's epochs, and those epochs changed every way an epoch changes: Foundation's bytes, decoding to themselves")
    func realEpochs() async throws {
        let manifests = try await Self.realManifests()
        let newest = try #require(manifests.last)
        #expect(newest.restore != nil && newest.process != nil && newest.descriptors != nil && newest.parent != nil,
                "the manifests have every optional part")
        #expect(newest.mappings.count > 10 && newest.threads.count >= 3)
        let memo = JSONMemo()
        try Self.expectMemoized(manifests, memo: memo)
        #expect(memo.reused > 0, "parts of one epoch's manifest were reused for the next")

        // Each change alone, after the unchanged manifest, with the same memo.
        var changed: [CheckpointManifest] = []
        func variant(_ change: (inout CheckpointManifest) -> Void) {
            var manifest = newest
            change(&manifest)
            changed += [newest, manifest]
        }
        variant { $0.mappings[3].pages = [PageRange(start: $0.mappings[3].start, end: $0.mappings[3].end, state: .stored)] }
        variant { $0.mappings.remove(at: 2) }
        variant { $0.mappings.insert($0.mappings[5], at: 1) }
        variant { $0.mappings.reverse() }
        variant { $0.mappings[0].path = "/tmp/e\u{301}" }  // decomposed, after "é" composed below
        variant { $0.mappings[0].path = "/tmp/\u{E9}" }
        variant { $0.threads[1].registers.rip += 1 }
        variant { $0.threads.removeLast() }
        variant { $0.threads[0].name = "renamed \"quoted\"" }
        variant { $0.descriptors?.removeFirst() }
        variant { $0.descriptors = nil }
        variant { $0.process?.fds.removeAll() }
        variant { $0.process?.identity.comm = "other" }
        variant { $0.process = nil }
        variant { $0.restore?.connections = nil }
        variant { $0.restore = nil }
        variant { $0.parent = nil; $0.kind = .full; $0.sequence = 0 }
        variant { $0.files["pages.data"] = FileDigest(size: 1, xxh64: 2) }
        variant { $0.stats.pagesWritten += 1 }
        variant { $0.threads = []; $0.mappings = [] }
        try Self.expectMemoized(changed, memo: memo)
    }

    @Test("what the memo keeps: equal values reused, a value of another type at the same place encoded, nothing kept past its lifetime")
    func memo() throws {
        struct Small: Codable, Equatable { var a: Int; var b: [String] }
        struct Other: Codable, Equatable { var a: Int; var b: [String]; var c = 1 }
        struct Document<T: Codable & Equatable>: Codable { var first: T; var list: [T] }
        struct Keyed: Codable, Equatable { var map: [String: Int] }
        let memo = JSONMemo(depth: 2)
        let one = Document(first: Small(a: 1, b: ["x"]), list: [Small(a: 2, b: []), Small(a: 3, b: ["y", "z"])])
        _ = try JSONWriter(pretty: false, memo: memo).encode(one)
        #expect(memo.reused == 0)
        #expect(try JSONWriter(pretty: false, memo: memo).encode(one) == Array(try JSONOutput.encoder(pretty: false).encode(one)))
        #expect(memo.reused == 2, "first and list whole (depth 1)")
        // Same places, another type whose first two fields are equal: those four encoded again;
        // only `first.b`, an equal `[String]` kept from the first encoding, is reused (the
        // elements' fields are deeper than the memo's depth).
        let other = Document(first: Other(a: 1, b: ["x"]), list: [Other(a: 2, b: []), Other(a: 3, b: ["y", "z"])])
        let (reused, encoded) = (memo.reused, memo.encoded)
        #expect(try JSONWriter(pretty: false, memo: memo).encode(other) == Array(try JSONOutput.encoder(pretty: false).encode(other)))
        #expect(memo.encoded == encoded + 4 && memo.reused == reused + 1)
        // Strings equal under Swift's `==` (canonical equivalence) but not byte for byte: the
        // KELVIN SIGN equals "K", the GREEK QUESTION MARK equals ";". Each encoded as itself.
        for (spelling, equivalent) in [("K", "\u{212A}"), (";", "\u{37E}"), ("e\u{301}", "\u{E9}")] {
            #expect(spelling == equivalent)
            for text in [spelling, equivalent, spelling] {
                let document = Document(first: Small(a: 1, b: [text]), list: [Small(a: 2, b: ["x", text])])
                #expect(try JSONWriter(pretty: false, memo: memo).encode(document) == Array(try JSONOutput.encoder(pretty: false).encode(document)),
                        "\(Array(text.unicodeScalars)) after an equal string")
                // As a dictionary's key.
                let keyed = Document(first: Keyed(map: [text: 1]), list: [Keyed(map: ["x": 2, text: 3])])
                #expect(try JSONWriter(pretty: false, memo: memo).encode(keyed) == Array(try JSONOutput.encoder(pretty: false).encode(keyed)),
                        "\(Array(text.unicodeScalars)) as a key after an equal key")
            }
        }
        // Values of a plain type (no references, so no strings), alone or in arrays, are
        // reused without a walk of their fields.
        struct Plain: Codable, Equatable { var a: UInt64; var b: Int32 }
        let plain = Document(first: Plain(a: 1, b: 2), list: (0..<1000).map { Plain(a: UInt64($0), b: -1) })
        let plainMemo = JSONMemo(depth: 2)
        _ = try JSONWriter(pretty: false, memo: plainMemo).encode(plain)
        #expect(try JSONWriter(pretty: false, memo: plainMemo).encode(plain) == Array(try JSONOutput.encoder(pretty: false).encode(plain)))
        #expect(plainMemo.reused == 2)
        // A memo past its lifetime encodes everything again.
        let expired = JSONMemo(depth: 2, lifetime: .zero)
        _ = try JSONWriter(pretty: false, memo: expired).encode(one)
        _ = try JSONWriter(pretty: false, memo: expired).encode(one)
        #expect(expired.reused == 0)
    }
}
