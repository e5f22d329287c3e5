import Foundation
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel

/// An allocator that gives freed memory back to the kernel (jemalloc's decay in redis:
/// `madvise(MADV_DONTNEED)` of whole extents) does so at any moment, between a checkpoint's copy
/// rounds and its freeze too. A page given back reads as zeros, and every checkpoint of the
/// chain must read back as the memory of its freeze, exactly. (Found by the failover tests: a
/// promoted redis whose allocator purged crashed on a corrupt dict. The freeze reused the page
/// map of the last copy round, and uffd-wp on 6.18 does not report every such purge as a write, so
/// purged pages kept their old bytes in the image.)
@Suite struct PurgedMemoryTests {
    /// Debian's redis-server with jemalloc purging every freed page at once, under writes and
    /// deletes while its checkpoints are taken: all its private writable memory (heap, jemalloc's
    /// arenas, stacks, data sections) reads back from each image of the chain as it was at that
    /// image's freeze.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: RedisRestoreTests.server), "needs Debian's redis-server (scripts/setup installs it)"),
          // The page-table strategies: hashes compare every page's bytes (and take minutes here).
          arguments: [TrackingStrategy.userfaultfdWriteProtect, .softDirty].filter(\.isSupported))
    func redisWithPurgingAllocatorChainsExactly(_ strategy: TrackingStrategy) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let port = try Kernel.freeLoopbackPort()
        let redis = try ChildProcess(executable: "/usr/bin/env",
                                     arguments: ["MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0", RedisRestoreTests.server, "--port", "\(port)",
                                                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", scratch.path],
                                     stdin: .null, stdout: .null, stderr: .null)
        defer { redis.kill() }
        let pid = redis.pid
        let loading = LockedBox(true)
        let load = Task {
            try await Blocking.run("redis-purge-load") {
                var client: RedisClient?
                for _ in 0..<500 where client == nil {
                    client = try? RedisClient(port: port)
                    if client == nil { usleep(10_000) }
                }
                guard let client else { throw RestoreFailure(description: "redis did not listen on \(port)") }
                var round = 0
                while loading.value {
                    round += 1
                    // Values of 1–16 KiB written, then most of them deleted: jemalloc frees and purges.
                    _ = try client.pipeline((0..<200).map { ["SET", "k:\(round % 7):\($0)", String(repeating: "v", count: 1024 * (1 + ($0 + round) % 16))] })
                    _ = try client.pipeline((0..<200).filter { ($0 + round) % 5 != 0 }.map { ["DEL", "k:\(round % 7):\($0)"] })
                }
            }
        }
        defer { loading.value = false }
        try await Task.sleep(for: .milliseconds(500))
        let frozen = LockedBox<[(UInt64, [UInt8])]>([])
        var options = CheckpointOptions(strategy: strategy)
        options.whileFrozen = {
            guard let maps = try? Kernel.readFile("/proc/\(pid)/maps"), let memory = try? ProcessMemoryFile(pid: pid) else { return }
            defer { memory.close() }
            var areas: [(UInt64, [UInt8])] = []
            for mapping in ProcMaps.parse(String(decoding: maps, as: UTF8.self))
            where mapping.perms.hasPrefix("rw") && mapping.perms.hasSuffix("p") && [.anonymous, .heap, .stack].contains(mapping.kind) {
                var bytes = [UInt8](repeating: 0, count: Int(mapping.end - mapping.start))
                let read = (try? bytes.withUnsafeMutableBytes { try memory.read(at: mapping.start, into: $0) }) ?? 0
                if read == bytes.count { areas.append((mapping.start, bytes)) }
            }
            frozen.value = areas
        }
        try await withCheckpointSession(pid: pid, options: options) { session in
            for index in 1...3 {
                let result = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/\(index)"),
                                                          parent: index == 1 ? nil : .previous(path: "../\(index - 1)"))
                let chain = try CheckpointImage.open(scratch.path + "/\(index)").chain()
                var differing: [UInt64] = []
                for (start, bytes) in frozen.value {
                    let stored = try chain.read(address: start, length: bytes.count)
                    differing += stride(from: 0, to: bytes.count, by: 4096).filter { stored[$0..<$0 + 4096] != bytes[$0..<$0 + 4096] }.map { start + UInt64($0) }
                }
                #expect(!frozen.value.isEmpty)
                #expect(differing.isEmpty, "checkpoint \(index) (\(result.manifest.kind)): \(differing.count) pages differ from the freeze: \(differing.prefix(6).map { "0x" + String($0, radix: 16) })")
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        loading.value = false
        try await load.value
    }
}
