import ArgumentParser
import Foundation
import MitosisImage
import MitosisModel

/// What an epoch's manifest costs to encode (on the primary) and decode (on the standby), on
/// the manifests of a real standby directory, epoch after epoch as `protect` sends them:
/// Foundation's `JSONEncoder`, `JSONWriter`, `JSONWriter` with the memo `protect` keeps between
/// epochs; the standby's summary decode (every epoch) and whole decode (once a second). Every
/// encoding is checked to be Foundation's bytes. A directory to measure: `mitosis-bench
/// replicate --keep DIR`.
struct ManifestBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "manifest",
                                                    abstract: "Encode and decode a standby directory's epoch manifests, old way and new.")

    @Argument(help: "A standby directory (its epochs/*/manifest.json are read, in epoch order).") var directory: String
    @Option(help: "Passes over the manifests; the figures are the best pass's means.") var rounds = 5
    @Option(help: "Epochs per second protect managed: the memo is emptied once a second, so every this many epochs here.")
    var epochsPerSecond = 14

    func run() throws {
        let epochs = directory + "/epochs"
        let names = try FileManager.default.contentsOfDirectory(atPath: epochs).filter { !$0.hasPrefix(".") }.sorted()
        let documents = try names.compactMap { name -> [UInt8]? in
            FileManager.default.fileExists(atPath: "\(epochs)/\(name)/manifest.json")
                ? Array(try Data(contentsOf: URL(fileURLWithPath: "\(epochs)/\(name)/manifest.json"))) : nil
        }
        guard !documents.isEmpty else { throw ValidationError("no manifests in \(epochs)") }
        let manifests = try documents.map { try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data($0)) }
        // As sent: compact, as Foundation wrote them.
        let sent = try manifests.map { Array(try JSONOutput.encoder(pretty: false).encode($0)) }
        let mean = sent.map(\.count).reduce(0, +) / sent.count
        print("\(manifests.count) manifests of \(directory), \(mean) bytes each on average (compact), best of \(rounds) passes")

        var mismatches = 0
        func check(_ bytes: [UInt8], _ index: Int) { if bytes != sent[index] { mismatches += 1 } }
        let foundation = try best { for manifest in manifests { _ = try JSONOutput.encoder(pretty: false).encode(manifest) } }
        let writer = try best { for (index, manifest) in manifests.enumerated() { check(try JSONWriter(pretty: false).encode(manifest), index) } }
        var reused = 0, encoded = 0
        let memoized = try best {
            var memo = JSONMemo()
            reused = 0
            encoded = 0
            for (index, manifest) in manifests.enumerated() {
                if index % epochsPerSecond == 0 {
                    reused += memo.reused
                    encoded += memo.encoded
                    memo = JSONMemo()
                }
                check(try JSONWriter(pretty: false, memo: memo).encode(manifest), index)
            }
            reused += memo.reused
            encoded += memo.encoded
        }
        let whole = try best { for bytes in sent { _ = try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(bytes)) } }
        let summary = try best { for bytes in sent { _ = try ManifestRelink.summary(bytes) } }

        let count = Double(manifests.count)
        func row(_ name: String, _ seconds: Double, against base: Double? = nil) {
            let ms = seconds / count * 1000
            print("  \(name.padding(toLength: 44, withPad: " ", startingAt: 0)) \(String(format: "%8.3f", ms)) ms"
                  + (base.map { String(format: "   %6.1f× faster", $0 / seconds) } ?? ""))
        }
        print("encode, per manifest (primary, every epoch):")
        row("Foundation JSONEncoder", foundation)
        row("JSONWriter", writer, against: foundation)
        row("JSONWriter + memo (protect)", memoized, against: foundation)
        print("  memo: \(reused) parts reused, \(encoded) encoded per pass; \(mismatches == 0 ? "every encoding is Foundation's bytes" : "\(mismatches) encodings DIFFER from Foundation's")")
        print("decode, per manifest (standby):")
        row("whole (JSONDecoder; once a second)", whole)
        row("summary (every epoch)", summary)
        if mismatches > 0 { throw ExitCode.failure }
    }

    /// The shortest of `rounds` timings of `body`, in seconds.
    private func best(_ body: () throws -> Void) rethrows -> Double {
        var shortest = Double.infinity
        for _ in 0..<rounds {
            let start = ContinuousClock.now
            try body()
            let elapsed = ContinuousClock.now - start
            shortest = min(shortest, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        }
        return shortest
    }
}
