import ArgumentParser
import Foundation
import Mitosis
import MitosisKernel

/// Every row of issue 15's table in one run, each beside its peer: the graph of a process with
/// ~10,000 descriptors beside `lsof -p` + `ss -anpe`, `inspect` beside `lsof -p`, the pages an
/// incremental checkpoint stores beside the shared-memory pages written, and `mitosis dump` of a
/// 1 GiB process beside CRIU's `dump --leave-running` (when a criu ≥ 4.0 is found; alone, and with
/// its images fsynced: the same durability as Mitosis's) and beside
/// `dd` copying the same bytes from `/proc/PID/mem` to a file and fsyncing it (a floor: no format,
/// no consistency). Contenders are interleaved, run after run; medians are reported.
struct IssueTableBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "table",
        abstract: "Issue 15's table: graph, inspect, shared-memory increments and a 1 GiB dump, each beside its peer.")

    @Option(help: "Repetitions of each row (the median is reported).") var runs = 5
    @Option(help: "Descriptors of the graph and inspect target (graphload: files, pipes, eventfds, socketpairs, TCP).") var descriptors = 10_000
    @Option(help: "Size of the dumped process, in MiB.") var mib = 1024
    @Option(help: "Where dumps are written (a scratch directory is made inside it and removed).") var scratch = "/var/tmp"
    @Flag(help: "Skip the 1 GiB dump row.") var noDump = false
    @Flag(help: "Only the 1 GiB dump row.") var onlyDump = false
    @Flag(help: "Also count the instructions of graph, inspect, lsof and ss under valgrind's callgrind (slow).") var callgrind = false

    func run() async throws {
        let started = Date()
        print("mitosis-bench table: \(runs) runs per row, \(ProcessInfo.processInfo.activeProcessorCount) cores, load \(Self.loadAverage())")
        var rows: [String] = []
        if !onlyDump {
            rows += try graphAndInspect()
            rows.append(try await sharedMemory())
        }
        if !noDump { rows += try dump() }
        print("\n| work | Mitosis (median) | peer (median) | peer ÷ Mitosis | goal | met |")
        print("|---|---|---|---|---|---|")
        for row in rows { print(row) }
        print(String(format: "\nfinished in %.0f s, load %@", Date().timeIntervalSince(started), Self.loadAverage()))
    }

    // MARK: Graph and inspect

    func graphAndInspect() throws -> [String] {
        let target = try InspectBenchmark.Target(descriptors: descriptors, scenario: "graphload")
        defer { target.stop() }
        let pid = String(target.pid)
        let fds = try ProcessReader.descriptors(TargetProcess(pid: target.pid)).count
        let mitosis = siblingExecutable("mitosis")
        var samples = Samples()
        // The same binary reading /proc one descriptor at a time (the BPF iterator turned off):
        // what graph and inspect cost before the iterator, in the same run.
        let procPath = ["/usr/bin/env", "MITOSIS_DESCRIPTOR_ITERATOR=0", mitosis]
        for _ in 0..<runs {
            samples.add("graph", try TimedRun.run(mitosis, ["graph", pid, "--format", "json"]))
            samples.add("lsof", try TimedRun.run("/usr/bin/lsof", ["-n", "-P", "-p", pid]))
            samples.add("ss", try TimedRun.run("/usr/bin/ss", ["-anpe"]))
            samples.add("inspect", try TimedRun.run(mitosis, ["inspect", pid]))
            samples.add("inspect --json", try TimedRun.run(mitosis, ["inspect", pid, "--json"]))
            samples.add("graph (/proc path)", try TimedRun.run(procPath[0], Array(procPath.dropFirst()) + ["graph", pid, "--format", "json"]))
            samples.add("inspect --json (/proc path)", try TimedRun.run(procPath[0], Array(procPath.dropFirst()) + ["inspect", pid, "--json"]))
        }
        print("graph/inspect target: graphload, \(fds) descriptors")
        for name in ["graph", "lsof", "ss", "inspect", "inspect --json", "graph (/proc path)", "inspect --json (/proc path)"] {
            print("  " + samples.line(name))
        }
        if callgrind {
            // Instructions executed in user space, the same on a busy machine and an idle one.
            let counts = try [("mitosis graph --format json", mitosis, ["graph", pid, "--format", "json"]),
                              ("mitosis inspect --json", mitosis, ["inspect", pid, "--json"]),
                              ("lsof -p", "/usr/bin/lsof", ["-n", "-P", "-p", pid]), ("ss -anpe", "/usr/bin/ss", ["-anpe"])]
                .map { ($0.0, try TimedRun.instructions($0.1, $0.2)) }
            print("  callgrind instructions: " + counts.map { "\($0.0) \($0.1.map(String.init) ?? "n/a")" }.joined(separator: ", "))
        }
        func ms(_ name: String, cpu: Bool = false) -> Double { samples.median(name, cpu: cpu) }
        func row(_ work: String, _ ours: String, _ peerName: String, _ peers: [String]) -> String {
            let wall = peers.map { ms($0) }.reduce(0, +) / ms(ours)
            let cpu = peers.map { ms($0, cpu: true) }.reduce(0, +) / ms(ours, cpu: true)
            return String(format: "| %@ | %.0f ms (cpu %.0f) | %@ %.0f ms (cpu %.0f) | %.2f× wall, %.2f× cpu | ≥ 2× | %@ |",
                          work, ms(ours), ms(ours, cpu: true), peerName, peers.map { ms($0) }.reduce(0, +),
                          peers.map { ms($0, cpu: true) }.reduce(0, +), wall, cpu, wall >= 2 ? "yes" : String(format: "no (%.0f %% of the goal)", 50 * wall))
        }
        return [
            row("graph --format json, \(fds) fds", "graph", "lsof -p + ss -anpe", ["lsof", "ss"]),
            row("graph --format json, /proc path (before)", "graph (/proc path)", "lsof -p + ss -anpe", ["lsof", "ss"]),
            row("inspect (text)", "inspect", "lsof -p", ["lsof"]),
            row("inspect --json", "inspect --json", "lsof -p", ["lsof"]),
            row("inspect --json, /proc path (before)", "inspect --json (/proc path)", "lsof -p", ["lsof"]),
        ]
    }

    // MARK: Shared memory

    /// A 4 MiB shared anonymous mapping (and a memfd and a SysV segment), every 10th page of the
    /// mapping rewritten between a full and an incremental checkpoint.
    func sharedMemory() async throws -> String {
        var stored: [Int] = [], sharedStored: [Int] = [], frozen: [UInt64] = []
        var written = 0, strategy = ""
        for run in 0..<runs {
            let target = try ScenarioTarget(["sharedmem", "1024"])
            defer { target.stop() }
            let shared = try target.address("shared")
            let page = UInt64(PagemapFile.pageSize)
            try await withCheckpointSession(pid: target.pid) { session in
                strategy = session.strategy.rawValue
                _ = try await session.checkpoint(to: CountingSink())
                try target.send("spread shared \(run + 2) 10")
                written = (1024 + 9) / 10
                let result = try await session.checkpoint(to: CountingSink(), parent: .previous(path: "../x"))
                stored.append(result.stats.pagesWritten)
                sharedStored.append(CheckpointSession.pages(of: result.manifest, in: .stored)
                    .clamped(start: shared, end: shared + 1024 * page).pageCount())
                frozen.append(result.stats.frozenNanoseconds)
            }
        }
        let median = { (values: [Int]) in values.sorted()[values.count / 2] }
        let all = median(stored), inShared = median(sharedStored)
        let goal = Double(written) * 1.25 + 512
        print("shared memory (\(strategy)): \(written) pages written of 1,024; incremental stored \(stored) pages (\(sharedStored) of them shared); frozen median \(String(format: "%.2f", Double(frozen.sorted()[frozen.count / 2]) / 1e6)) ms")
        return String(format: "| incremental checkpoint, 4 MiB shared anonymous mapping, 10 %% of it written (%@) | %d pages stored (%d in the shared mapping) | %d pages written | %.2f× written | ≤ 1.25 × written + 2 MiB (%.0f pages) | %@ |",
                      strategy, all, inShared, written, Double(all) / Double(written), goal, Double(all) <= goal ? "yes" : "no")
    }

    // MARK: Full dump

    /// `mitosis dump` (durable: its image is fsynced and renamed into place before it returns)
    /// beside CRIU's `dump --leave-running`, which returns with its images in the page cache: once
    /// as CRIU users see it, and once followed by `sync` of its image files (fsync of each: the
    /// same durability as Mitosis's), timed together. Freeze times beside: Mitosis's from its
    /// manifest, CRIU's from its own `stats-dump` (`frozen_time`).
    func dump() throws -> [String] {
        let target = try ScenarioTarget(["churn", "\(mib)", "0", "0"])
        defer { target.stop() }
        let area = try target.address("churn")
        let directory = scratch + "/mitosis-bench-table-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let mitosis = siblingExecutable("mitosis")
        let criu = Self.criu()
        var samples = Samples()
        var frozen: [Double] = [], unsyncedFrozen: [Double] = [], criuFrozen: [Double] = []
        var sizes: [String: [UInt64]] = [:]
        for run in 0..<runs {
            let images = directory + "/mitosis-\(run)"
            let (wall, output) = try Self.timed(mitosis, ["dump", String(target.pid), "--images", images, "--json"])
            samples.add("mitosis dump", wall: wall)
            if let milliseconds = Self.frozenMilliseconds(output) { frozen.append(milliseconds) }
            sizes["mitosis dump", default: []].append(Self.directorySize(images))
            try? FileManager.default.removeItem(atPath: images)
            // The same dump with its page data compressed (zstd, `--compress`).
            let packed = directory + "/mitosis-compressed-\(run)"
            samples.add("mitosis dump --compress", wall: try Self.timed(mitosis, ["dump", String(target.pid), "--images", packed, "--compress"]).0)
            sizes["mitosis dump --compress", default: []].append(Self.directorySize(packed))
            try? FileManager.default.removeItem(atPath: packed)
            // Without fsync (`--no-sync`), as CRIU, against CRIU alone.
            let unsynced = directory + "/mitosis-unsynced-\(run)"
            let (unsyncedWall, unsyncedOutput) = try Self.timed(mitosis, ["dump", String(target.pid), "--images", unsynced, "--no-sync", "--json"])
            samples.add("mitosis dump --no-sync", wall: unsyncedWall)
            if let milliseconds = Self.frozenMilliseconds(unsyncedOutput) { unsyncedFrozen.append(milliseconds) }
            // Its writeback kept out of the next contender's time, as CRIU's is (below); not timed.
            let written = ((try? FileManager.default.contentsOfDirectory(atPath: unsynced)) ?? []).sorted().map { unsynced + "/" + $0 }
            _ = try Self.timed("/bin/sync", written + [unsynced])
            try? FileManager.default.removeItem(atPath: unsynced)
            let copy = directory + "/dd-\(run)"
            samples.add("dd", wall: try Self.timed("/bin/dd", ["if=/proc/\(target.pid)/mem", "of=\(copy)", "bs=2M", "count=\(mib / 2)",
                                                               "skip=\(area)", "iflag=skip_bytes", "conv=fsync", "status=none"]).0)
            try? FileManager.default.removeItem(atPath: copy)
            if case .found(let path, _) = criu {
                let criuImages = directory + "/criu-\(run)"
                try FileManager.default.createDirectory(atPath: criuImages, withIntermediateDirectories: false)
                let dumped = try Self.timed(path, ["dump", "-t", String(target.pid), "--leave-running", "--shell-job", "-D", criuImages]).0
                // Its images made durable as Mitosis's are: each file and the directory fsynced
                // (`sync FILE…` fsyncs each one it is given).
                let files = ((try? FileManager.default.contentsOfDirectory(atPath: criuImages)) ?? []).sorted().map { criuImages + "/" + $0 }
                let synced = try Self.timed("/bin/sync", files + [criuImages]).0
                samples.add("criu", wall: dumped)
                samples.add("criu + sync", wall: dumped + synced)
                if let microseconds = Self.criuFrozenMicroseconds(criuImages + "/stats-dump") { criuFrozen.append(Double(microseconds) / 1e3) }
                try? FileManager.default.removeItem(atPath: criuImages)
            }
        }
        print("dump target: \(mib) MiB written once (churn \(mib) 0 0), images in \(scratch)")
        for name in ["mitosis dump", "mitosis dump --compress", "mitosis dump --no-sync", "dd", "criu", "criu + sync"] where samples.wall[name] != nil { print("  " + samples.line(name)) }
        let ours = samples.median("mitosis dump"), floor = samples.median("dd")
        let size = { (name: String) in Double(sizes[name].map { $0.sorted()[$0.count / 2] } ?? 0) / 1048576 }
        print(String(format: "  image size median: %.1f MiB uncompressed, %.1f MiB compressed (the target's pages: one byte value each, compression's best case)",
                     size("mitosis dump"), size("mitosis dump --compress")))
        let median = { (values: [Double]) in values.isEmpty ? Double.nan : values.sorted()[values.count / 2] }
        let frozenMedian = median(frozen)
        print(String(format: "  mitosis frozen median %.1f ms (--no-sync %.1f ms); criu frozen (its stats-dump frozen_time) median %.1f ms",
                     frozenMedian, median(unsyncedFrozen), median(criuFrozen)))
        var rows = [String(format: "| `mitosis dump` of %d MiB (frozen %.1f ms) | %.0f ms | `dd` /proc/PID/mem → file + fsync %.0f ms (a floor, not a goal) | %.2f× | — | — |",
                           mib, frozenMedian, ours, floor, floor / ours),
                    String(format: "| `mitosis dump --compress` of %d MiB (zstd; one byte value per page: compression's best case) | %.0f ms, image %.1f MiB | `mitosis dump` (uncompressed) %.0f ms, image %.1f MiB | %.2f× wall, %.0f× smaller | — | — |",
                           mib, samples.median("mitosis dump --compress"), size("mitosis dump --compress"), ours, size("mitosis dump"),
                           ours / samples.median("mitosis dump --compress"), size("mitosis dump") / max(size("mitosis dump --compress"), 0.001))]
        switch criu {
        case .found(let path, let version):
            let unsynced = samples.median("mitosis dump --no-sync")
            let unsyncedFrozenMedian = median(unsyncedFrozen)
            for (mode, mine, mineFrozen, peerName, durability) in [
                ("durable", ours, frozenMedian, "criu + sync", "+ `sync` of its image files (durable, as Mitosis's)"),
                ("`--no-sync` (no fsync, as CRIU)", unsynced, unsyncedFrozenMedian, "criu", "(no fsync either)"),
                ("durable", ours, frozenMedian, "criu", "(its images left in the page cache)"),
            ] {
                let peer = samples.median(peerName)
                rows.append(String(format: "| `mitosis dump` of %d MiB, %@ (frozen %.1f ms) | %.0f ms | CRIU %@ `dump --leave-running` %@ %.0f ms (frozen %.0f ms: %.0f× Mitosis's) | %.2f× | ≥ 1× | %@ |",
                                   mib, mode, mineFrozen, mine, version, durability, peer, median(criuFrozen), median(criuFrozen) / mineFrozen, peer / mine,
                                   peer >= mine ? "yes" : String(format: "no (%.0f %% of the goal)", 100 * peer / mine)))
            }
            print("  CRIU: \(path)")
        case .missing(let why):
            print("  CRIU column skipped: \(why)")
            rows.append("| `mitosis dump` of \(mib) MiB | \(String(format: "%.0f", ours)) ms | CRIU: skipped, \(why) | — | ≥ 1× | not measured |")
        }
        return rows
    }

    /// The frozen time of a `mitosis dump --json` run (its `stats.frozen_nanoseconds`), in ms.
    static func frozenMilliseconds(_ output: [UInt8]) -> Double? {
        guard let stats = (try? JSONSerialization.jsonObject(with: Data(output)) as? [String: Any])?["stats"] as? [String: Any],
              let nanoseconds = stats["frozen_nanoseconds"] as? NSNumber else { return nil }
        return nanoseconds.doubleValue / 1e6
    }

    /// Bytes of the regular files directly in `path` (an image directory).
    static func directorySize(_ path: String) -> UInt64 {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).reduce(0) { total, name in
            total + (((try? FileManager.default.attributesOfItem(atPath: path + "/" + name))?[.size] as? NSNumber)?.uint64Value ?? 0)
        }
    }

    /// `frozen_time` (µs) of CRIU's `stats-dump` image: two magic words, a u32 length, then a
    /// protobuf `stats_entry` whose field 1 is the `dump_stats_entry` (field 2: frozen_time).
    static func criuFrozenMicroseconds(_ path: String) -> UInt64? {
        guard let bytes = FileManager.default.contents(atPath: path).map(Array.init), bytes.count > 12 else { return nil }
        var index = 12
        func varint() -> UInt64? {
            var value: UInt64 = 0, shift: UInt64 = 0
            while index < bytes.count, shift < 64 {
                let byte = bytes[index]
                index += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte & 0x80 == 0 { return value }
                shift += 7
            }
            return nil
        }
        guard varint() == (1 << 3 | 2), let length = varint() else { return nil }
        let end = min(bytes.count, index + Int(length))
        while index < end, let key = varint() {
            switch key & 7 {
            case 0:
                guard let value = varint() else { return nil }
                if key >> 3 == 2 { return value }
            case 2:
                guard let skip = varint() else { return nil }
                index += Int(skip)
            default: return nil
            }
        }
        return nil
    }

    enum CRIU { case found(String, String), missing(String) }

    /// A criu ≥ 4.0 from `$CRIU` or PATH (Debian's 3.17 does not start on recent kernels).
    static func criu() -> CRIU {
        let environment = ProcessInfo.processInfo.environment
        let candidates = [environment["CRIU"]].compactMap { $0 }
            + (environment["PATH"] ?? "").split(separator: ":").map { $0 + "/criu" }
        guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            return .missing("no criu binary on PATH or in $CRIU")
        }
        let output = (try? ToolOutput.capture(path, ["--version"])).map { String(decoding: $0, as: UTF8.self) } ?? ""
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("Version:") }),
              let version = line.split(separator: " ").last, let major = Int(version.split(separator: ".").first ?? "") else {
            return .missing("\(path) does not tell its version")
        }
        guard major >= 4 else { return .missing("\(path) is version \(version); CRIU before 4.0 does not run on this kernel") }
        return .found(path, String(version))
    }

    /// Wall time of one run, with its standard output.
    static func timed(_ executable: String, _ arguments: [String]) throws -> (Duration, [UInt8]) {
        let clock = ContinuousClock()
        let start = clock.now
        let child = try ChildProcess(executable: executable, arguments: arguments, stdin: .null, stdout: .pipe, stderr: .null)
        let output = child.readToEnd().output
        let status = child.wait()
        guard status == 0 else { throw ValidationError("\(executable) \(arguments.joined(separator: " ")) exited with \(status)") }
        return (clock.now - start, output)
    }

    static func loadAverage() -> String {
        ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
    }
}
