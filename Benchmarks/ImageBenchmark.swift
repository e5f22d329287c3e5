import ArgumentParser
import Foundation
import Mitosis
import MitosisKernel
import SystemPackage

/// What integrity and atomicity cost: XXH64 beside a plain copy of the same bytes, and an image
/// written with `DirectorySink` (checksums, index, manifest, commit record, fsyncs, rename)
/// beside the same bytes written to one file and fsynced. Then a full read-back and verify.
struct ImageBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "image", abstract: "Checkpoint image write, verify and read costs.")

    @Option(help: "Megabytes of page data.") var megabytes: Int = 256
    @Option(help: "Directory to write in (a scratch directory is made inside it).") var directory: String = "/tmp"
    @Option(help: "Repetitions (the median is reported).") var runs: Int = 5

    func run() throws {
        let pageSize = 4096
        let pages = megabytes << 20 / pageSize
        var bytes = [UInt8](repeating: 0, count: pages * pageSize)
        for index in stride(from: 0, to: bytes.count, by: 8) { bytes[index] = UInt8(truncatingIfNeeded: index >> 12) }
        let scratch = directory + "/mitosis-bench-image-\(getpid())"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: scratch) }

        var copy = [UInt8](repeating: 0, count: bytes.count)
        var sink: UInt64 = 0
        let hash = median { sink ^= Checksum.xxh64(bytes) }
        let memcpy = median { copy.withUnsafeMutableBytes { target in bytes.withUnsafeBytes { target.copyMemory(from: $0) } } }

        var round = 0
        let image = median {
            round += 1
            let path = scratch + "/img\(round)"
            let sink = DirectorySink(directory: path)
            let header = CheckpointHeader(kind: .full, sequence: 0, pid: 1, pageSize: pageSize)
            try! sink.begin(header)
            try! bytes.withUnsafeBytes { try sink.writePages(at: 0x1000_0000, $0) }
            let mapping = CheckpointMapping(start: 0x1000_0000, end: 0x1000_0000 + UInt64(bytes.count), perms: "rw-p", offset: 0,
                                            path: nil, kind: "anonymous", pages: [PageRange(start: 0x1000_0000, end: 0x1000_0000 + UInt64(bytes.count), state: .stored)])
            try! sink.finish(CheckpointManifest(header: header, tracking: "bench", mappings: [mapping]))
        }
        let plain = median {
            round += 1
            let fd = try! FileDescriptor.open(scratch + "/plain\(round)", .writeOnly, options: [.create, .exclusiveCreate], permissions: [.ownerReadWrite])
            _ = try! bytes.withUnsafeBytes { try fd.writeAll($0) }
            try! Kernel.sync(fd)
            try! fd.close()
        }
        let last = scratch + "/img\(runs)"
        let verify = median { precondition(CheckpointImage.verifyChain(last).isEmpty) }
        let read = median { _ = try! CheckpointImage.open(last).read(address: 0x1000_0000, length: bytes.count) }

        func rate(_ d: Duration) -> String { String(format: "%.0f MB/s", Double(megabytes) / seconds(d)) }
        print("\(megabytes) MiB of pages, median of \(runs) (checksum \(Checksum.hex(sink)))")
        print("  XXH64          \(hash)  \(rate(hash))   vs memcpy \(memcpy): \(String(format: "%.2f", seconds(hash) / seconds(memcpy)))x")
        print("  DirectorySink  \(image)  \(rate(image))   vs write+fsync of one file \(plain): \(String(format: "%.2f", seconds(image) / seconds(plain)))x")
        print("  verifyChain    \(verify)  \(rate(verify))")
        print("  read (chain)   \(read)  \(rate(read))")
    }

    private func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    private func median(_ body: () -> Void) -> Duration {
        let clock = ContinuousClock()
        var samples: [Duration] = []
        for _ in 0..<runs {
            let start = clock.now
            body()
            samples.append(clock.now - start)
        }
        return samples.sorted()[runs / 2]
    }
}
