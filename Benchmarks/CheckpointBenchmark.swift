import ArgumentParser
import Foundation
import Glibc
import Mitosis
import MitosisKernel

/// Checkpoints of a large process, each figure beside its baseline from the same run:
/// full-checkpoint throughput beside a raw `process_vm_readv` copy; the frozen time of a
/// consistent checkpoint of a process rewriting 1 % of its pages every 100 ms beside a tool that
/// copies everything while frozen; incremental bytes beside the bytes the target wrote; and the
/// target's slowdown while tracking is on.
///
/// Needs the scenario program: `swift build -c release --product mitosis-scenario` first.
struct CheckpointBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "checkpoint",
                                                    abstract: "Checkpoint throughput, freeze time, incremental size and tracking overhead.")

    @Option(help: "Size of the target's memory, in MiB.") var mib = 1024
    @Option(help: "Percent of pages the target rewrites each interval.") var percent = 1
    @Option(help: "The target's rewrite interval, in milliseconds.") var intervalMs = 100
    @Option(help: "Incremental checkpoints to take of the rewriting target.") var checkpoints = 10
    @Option(help: "Dirty tracking: soft-dirty, uffd-wp or hash (default: the best available).") var track: String?
    @Option(help: "Where images are written (removed afterwards).") var scratch = NSTemporaryDirectory()

    func run() async throws {
        var chosen = try track.map { name in
            guard let strategy = TrackingStrategy(rawValue: name) else { throw ValidationError("unknown strategy \(name)") }
            return strategy
        }
        if chosen == nil { chosen = TrackingStrategy.automatic }
        let strategy = chosen!
        let directory = scratch + "/mitosis-bench-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        print("target: \(mib) MiB; tracking: \(strategy.rawValue)")
        try await throughput(strategy, directory)
        try await freezeAndIncrements(strategy, directory)
        try await incrementSize(strategy)
        try await slowdown(strategy)
    }

    // MARK: 1. Full checkpoint throughput

    func throughput(_ strategy: TrackingStrategy, _ directory: String) async throws {
        let target = try ScenarioTarget(["churn", "\(mib)", "0", "0"])
        defer { target.stop() }
        let start = try target.address("churn")
        let length = mib << 20
        let raw = try (0..<2).map { _ in try RawCopy.time(pid: target.pid, address: start, length: length) }.min()!
        let session = try await CheckpointSession(pid: target.pid, options: CheckpointOptions(strategy: strategy))
        let counted = try await session.checkpoint(to: CountingSink())
        let disk = try await session.checkpoint(to: DirectorySink(directory: directory + "/full"))
        await session.stop()
        let gib = Double(length) / Double(1 << 30)
        func rate(_ d: Duration) -> String { String(format: "%.2f GiB/s", gib / Self.seconds(d)) }
        let engine = Duration.nanoseconds(Int64(counted.stats.durationNanoseconds))
        let onDisk = Duration.nanoseconds(Int64(disk.stats.durationNanoseconds))
        print("""
            1. full checkpoint of \(mib) MiB (target idle)
               raw process_vm_readv copy:        \(Self.ms(raw)) (\(rate(raw)))
               mitosis, pages to a counting sink: \(Self.ms(engine)) (\(rate(engine))), \(String(format: "%.2f", Self.seconds(engine) / Self.seconds(raw)))× raw
               mitosis, image on disk:           \(Self.ms(onDisk)) (\(rate(onDisk))), \(String(format: "%.2f", Self.seconds(onDisk) / Self.seconds(raw)))× raw
               frozen: \(Self.ms(counted.stats.frozenNanoseconds)) (counting sink), \(Self.ms(disk.stats.frozenNanoseconds)) (disk)
            """)
    }

    // MARK: 2 and 3. Frozen time and incremental size under writes

    func freezeAndIncrements(_ strategy: TrackingStrategy, _ directory: String) async throws {
        let target = try ScenarioTarget(["churn", "\(mib)", "\(percent)", "\(intervalMs)"])
        defer { target.stop() }
        let start = try target.address("churn")
        let length = mib << 20
        let clock = ContinuousClock()
        // A tool that copies everything while the target is frozen.
        var naive: [Duration] = []
        for _ in 0..<3 {
            let tracer = try await Tracer.freeze(pid: target.pid)
            let frozenAt = clock.now
            try RawCopy.read(pid: target.pid, address: start, length: length)
            await tracer.thaw()
            naive.append(clock.now - frozenAt)
        }
        let session = try await CheckpointSession(pid: target.pid, options: CheckpointOptions(strategy: strategy))
        try FileManager.default.createDirectory(atPath: directory + "/chain", withIntermediateDirectories: true)
        let full = try await session.checkpoint(to: DirectorySink(directory: directory + "/chain/1"))
        var frozen: [UInt64] = [], durations: [UInt64] = []
        for number in 2...(checkpoints + 1) {
            try await Task.sleep(for: .milliseconds(1000))
            let result = try await session.checkpoint(to: DirectorySink(directory: directory + "/chain/\(number)"),
                                                      parent: .previous(path: "../\(number - 1)"))
            frozen.append(result.stats.frozenNanoseconds)
            durations.append(result.stats.durationNanoseconds)
        }
        await session.stop()
        print("""
            2. consistent checkpoint of \(mib) MiB rewriting \(percent) % of its pages every \(intervalMs) ms
               copy-everything-while-frozen tool: frozen \(Self.ms(Self.median(naive))) (median of \(naive.count))
               mitosis full checkpoint:           frozen \(Self.ms(full.stats.frozenNanoseconds)), \(full.precopyRounds) pre-copy rounds, \
            \(full.pagesCopiedFrozen) pages copied frozen, duration \(Self.ms(full.stats.durationNanoseconds))
               mitosis incremental (1 s apart):   frozen median \(Self.ms(Self.median(frozen))), max \(Self.ms(frozen.max() ?? 0)), \
            duration median \(Self.ms(Self.median(durations)))
               ratio frozen (naive / mitosis incremental median): \(String(format: "%.0f", Self.seconds(Self.median(naive)) / (Double(Self.median(frozen)) / 1e9)))×
            """)
    }

    // MARK: 3. Incremental size beside what was written

    func incrementSize(_ strategy: TrackingStrategy) async throws {
        let target = try ScenarioTarget(["churn", "\(mib)", "0", "0"])
        defer { target.stop() }
        let pages = (mib << 20) / Int(PagemapFile.pageSize) * max(percent, 1) / 100 * 10
        let session = try await CheckpointSession(pid: target.pid, options: CheckpointOptions(strategy: strategy))
        _ = try await session.checkpoint(to: CountingSink())
        var stored: [Int] = []
        for _ in 0..<checkpoints {
            try target.send("burst \(pages)")
            stored.append(try await session.checkpoint(to: CountingSink(), parent: .previous(path: "../x")).stats.pagesWritten)
        }
        await session.stop()
        let page = Int(PagemapFile.pageSize)
        print("""
            3. incremental size: \(checkpoints) incremental checkpoints, each after the target rewrote \(pages) distinct pages (64 bytes each)
               pages stored per checkpoint: median \(Self.median(stored)) (\((Self.median(stored) * page) >> 20) MiB), \
            \(String(format: "%.3f", Double(Self.median(stored)) / Double(pages)))× the pages written; \
            bytes the target wrote: \((pages * 64) >> 10) KiB
            """)
    }

    // MARK: 4. Target slowdown while tracking

    func slowdown(_ strategy: TrackingStrategy) async throws {
        // The rewriting target of part 2: how long each of its rounds of writes takes (pauses
        // excluded), untracked, with tracking on (incremental checkpoints every second re-arm it,
        // so each first write to a page after a checkpoint faults), and after tracking stopped.
        let target = try ScenarioTarget(["churn", "\(mib)", "\(percent)", "\(intervalMs)"])
        defer { target.stop() }
        func perRound(_ during: () async throws -> Void) async throws -> Double {
            try target.send("count")
            let rounds = Int(target.facts["rounds"] ?? "") ?? 0, busy = Int(target.facts["busy_ns"] ?? "") ?? 0
            try await during()
            try target.send("count")
            let doneRounds = (Int(target.facts["rounds"] ?? "") ?? 0) - rounds
            return Double((Int(target.facts["busy_ns"] ?? "") ?? 0) - busy) / Double(max(doneRounds, 1))
        }
        let untracked = try await perRound { try await Task.sleep(for: .seconds(3)) }
        let session = try await CheckpointSession(pid: target.pid, options: CheckpointOptions(strategy: strategy))
        _ = try await session.checkpoint(to: CountingSink())
        var taken = 0
        let tracked = try await perRound {
            for _ in 0..<3 {
                try await Task.sleep(for: .seconds(1))
                _ = try await session.checkpoint(to: CountingSink(), parent: .previous(path: "../x"))
                taken += 1
            }
        }
        await session.stop()
        let after = try await perRound { try await Task.sleep(for: .seconds(3)) }
        let pages = (mib << 20) / Int(PagemapFile.pageSize) * percent / 100
        print("""
            4. target slowdown: time the target of part 2 spends per round of \(pages) page writes
               untracked \(Self.ms(UInt64(untracked))); tracking on (\(taken) incremental checkpoints) \(Self.ms(UInt64(tracked))); \
            after stop \(Self.ms(UInt64(after)))
               slowdown while tracking: \(String(format: "%.2f", tracked / max(untracked, 1)))× per round of writes, \
            \(String(format: "%.1f", (tracked - untracked) / 1e6 / Double(intervalMs) * 100)) % of the target's time
            """)
    }

    // MARK: Helpers

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
    static func ms(_ duration: Duration) -> String { String(format: "%.1f ms", seconds(duration) * 1000) }
    static func ms(_ nanoseconds: UInt64) -> String { String(format: "%.1f ms", Double(nanoseconds) / 1e6) }
    static func median<T: Comparable>(_ values: [T]) -> T { values.sorted()[values.count / 2] }
}

/// A sink that keeps nothing: it measures the engine without the disk.
final class CountingSink: CheckpointSink, @unchecked Sendable {
    private(set) var bytes = 0
    func begin(_ header: CheckpointHeader) throws {}
    func writePages(at address: UInt64, _ pages: UnsafeRawBufferPointer) throws { bytes += pages.count }
    func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest { manifest }
    func abort(reason: String) {}
}

/// The baseline: one process_vm_readv per 64 MiB.
enum RawCopy {
    /// The time to copy into a buffer already touched (the best case for the baseline).
    static func time(pid: Int32, address: UInt64, length: Int) throws -> Duration {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
        defer { buffer.deallocate() }
        memset(buffer.baseAddress!, 1, length)
        let clock = ContinuousClock()
        return try clock.measure { try read(pid: pid, address: address, length: length, into: buffer) }
    }

    /// Copies into a fresh buffer, as a tool that copies while frozen would.
    static func read(pid: Int32, address: UInt64, length: Int) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
        defer { buffer.deallocate() }
        try read(pid: pid, address: address, length: length, into: buffer)
    }

    static func read(pid: Int32, address: UInt64, length: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < length {
            let count = min(64 << 20, length - done)
            let n = try Kernel.readMemory(pid: pid, address: address + UInt64(done),
                                          into: UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + count]))
            guard n == count else { throw ValidationError("short read at \(done)") }
            done += count
        }
    }
}

/// A `mitosis-scenario` process started for a benchmark; it dies when its stdin closes.
final class ScenarioTarget {
    private let target: LaunchedTarget
    private(set) var facts: [String: String] = [:]
    /// The scenario's own pid, as it reported it.
    private(set) var pid: Int32 = 0

    init(_ arguments: [String]) throws {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let path = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("mitosis-scenario").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw ValidationError("\(path) is missing: swift build -c release --product mitosis-scenario")
        }
        // Through a shell: the scenario dies with the thread that spawned it (PR_SET_PDEATHSIG),
        // and the async runtime's threads come and go. The shell outlives none of it.
        target = try LaunchedTarget(executable: "/bin/sh", arguments: ["-c", "\"$0\" \"$@\"; exit $?", path] + arguments)
        try parse(target.readyLine)
        guard let reported = facts["pid"].flatMap(Int32.init) else { throw ValidationError("the scenario reported no pid") }
        pid = reported
    }

    func address(_ key: String) throws -> UInt64 {
        guard let text = facts[key], let value = UInt64(text.dropFirst(2), radix: 16) else { throw ValidationError("no \(key)") }
        return value
    }

    /// Sends one command and waits for the scenario's answer.
    func send(_ command: String) throws {
        try target.send(command)
        guard let line = target.readLine() else { throw ValidationError("scenario exited") }
        try parse(line)
    }

    /// Sends `count` and returns the counter the scenario reports as `key`.
    func counter(_ key: String) throws -> Int {
        try send("count")
        guard let value = facts[key].flatMap(Int.init) else { throw ValidationError("no \(key)") }
        return value
    }

    private func parse(_ line: String) throws {
        guard line.hasPrefix("READY") else { throw ValidationError("scenario: \(line)") }
        facts = [:]
        for pair in line.dropFirst(5).split(separator: " ") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { facts[String(parts[0])] = String(parts[1]) }
        }
    }

    /// Closes the scenario's stdin, which ends it.
    func stop() { target.stop() }
}
