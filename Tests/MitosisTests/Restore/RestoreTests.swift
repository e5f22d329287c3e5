import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// The `restore` scenario, checkpointed while it runs: its image, log and original thread ids.
struct CheckpointedScenario {
    let child: ScenarioProcess
    let scratch: ScratchDirectory
    let log: String
    let image: String
    let manifest: CheckpointManifest

    /// Starts the scenario with `mib` MiB of patterned memory and `workers` counting threads,
    /// has it pass one self-check, and checkpoints it into `scratch/image`. With `incremental`,
    /// it passes a second check and is checkpointed again over the first, into `scratch/next`.
    /// `compression`: how both images' page data is compressed.
    init(mib: Int = 16, workers: Int = 2, incremental: Bool = false, compression: PageCompression? = nil) async throws {
        scratch = try ScratchDirectory()
        log = scratch.path + "/scenario.log"
        image = scratch.path + (incremental ? "/next" : "/image")
        child = try await ScenarioProcess("restore", [log, "\(mib)", "\(workers)", "120"])
        try await child.send("detach")
        kill(child.pid, SIGUSR1)
        _ = try await Self.awaitCheck(1, in: log)
        let session = try await CheckpointSession(pid: child.pid)
        do {
            var result = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/image", compression: compression))
            if incremental {
                kill(child.pid, SIGUSR1)
                _ = try await Self.awaitCheck(2, in: log)
                result = try await session.checkpoint(to: DirectorySink(directory: image, compression: compression),
                                                        parent: .previous(path: "../image"))
            }
            manifest = result.manifest
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
    }

    /// Kills the original and reaps it, so that its pid is free for the restore.
    func killOriginal() { child.stop() }

    func remove() {
        child.stop()
        scratch.remove()
    }

    /// Waits for line `CHECK n=N …` in the log and returns it.
    static func awaitCheck(_ number: Int, in log: String, timeout: Duration = .seconds(30)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("CHECK n=\(number) ") }) { return String(line) }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw ScenarioError.protocolError("no CHECK n=\(number) in \(log)")
    }

    /// `key=value` of a CHECK line.
    static func value(_ key: String, in line: String) -> String? {
        line.split(separator: " ").first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
    }
}

/// Kills and reaps a restored process (a child of this test process).
func endRestored(_ pid: Int32) {
    kill(pid, SIGKILL)
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
}

struct RestoreFailure: Error, CustomStringConvertible {
    var description: String
}

@Suite(.serialized) struct RestoreTests {
    @Test func restoredProcessPassesItsSelfCheckAndRunsOn() async throws {
        let scenario = try await CheckpointedScenario(mib: 16, workers: 3)
        defer { scenario.remove() }
        let pid = scenario.child.pid
        let tids = scenario.manifest.threads.map(\.tid).sorted()
        #expect(tids.count == 5)
        scenario.killOriginal()
        #expect(kill(pid, 0) == -1 && errno == ESRCH)

        let restorer = try Restorer(image: CheckpointImage.open(scenario.image))
        #expect(restorer.refusals().isEmpty)
        let chain = restorer.chain, manifest = restorer.manifest
        let result = try await restorer.restore(verify: { pid in
            // Before any thread runs: byte-exact memory and the image's mappings.
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ, first 0x\(String(pages[0], radix: 16))") }
            let maps = try RestoreVerification.mappingDifferences(pid: pid, manifest: manifest)
            guard maps.isEmpty else { throw RestoreFailure(description: maps.joined(separator: "; ")) }
        })
        defer { endRestored(pid) }
        #expect(result.pid == pid && result.threads == 5 && result.descriptors == 8)

        // Same pid, same tids, running untraced; descriptors at their numbers and offsets.
        let live = try Kernel.listDirectory("/proc/\(pid)/task").compactMap { Int32($0) }.sorted()
        #expect(live == tids)
        #expect(try TargetHealth.tracer(of: pid) == 0)
        // The userfaultfd that filled its memory is gone: no descriptor, no registered mapping
        // ("um"/"uw" in VmFlags).
        let descriptors = try Kernel.listDirectory("/proc/\(pid)/fd")
        #expect(try descriptors.filter { try Kernel.readLink("/proc/\(pid)/fd/\($0)").contains("userfaultfd") }.isEmpty)
        #expect(try descriptors.filter { String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/\($0)"), as: UTF8.self).contains("pending:") }.isEmpty)
        let registered = String(decoding: try Kernel.readFile("/proc/\(pid)/smaps"), as: UTF8.self).split(separator: "\n")
            .filter { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains { $0 == "um" || $0 == "uw" } }
        #expect(registered.isEmpty, "\(registered)")
        for fd in 0...2 { #expect(try Kernel.readLink("/proc/\(pid)/fd/\(fd)") == "/dev/null") }
        #expect(try Kernel.readLink("/proc/\(pid)/fd/3") == scenario.log)
        let logged = try String(contentsOfFile: scenario.log, encoding: .utf8)
        let fdinfo = String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/3"), as: UTF8.self)
        #expect(fdinfo.hasPrefix("pos:\t\(logged.utf8.count)\n"))
        // The eventfd: its counter, non-blocking and close-on-exec (flags 02004002 = O_RDWR|O_NONBLOCK|O_CLOEXEC).
        #expect(try Kernel.readLink("/proc/\(pid)/fd/4") == "anon_inode:[eventfd]")
        let eventfd = String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/4"), as: UTF8.self)
        #expect(eventfd.contains("flags:\t02004002\n") && eventfd.contains("eventfd-count:                5\n")
                && eventfd.contains("eventfd-semaphore: 0\n"), "\(eventfd)")

        // The pipe: one pipe behind fds 5 and 6 (its bytes, capacity and flags are checked by
        // the scenario itself below).
        let pipeEnds = try [5, 6].map { try Kernel.readLink("/proc/\(pid)/fd/\($0)") }
        #expect(pipeEnds[0].hasPrefix("pipe:[") && pipeEnds[0] == pipeEnds[1], "\(pipeEnds)")
        // The epoll's watches, as fdinfo shows them (the kernel adds EPOLLERR|EPOLLHUP: 0x19).
        let epoll = String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/7"), as: UTF8.self)
        #expect(epoll.contains("tfd:        5 events:       19 data:             1234") && epoll.contains("tfd:        4 events:       19 data:               42"), "\(epoll)")
        // The pending SIGUSR2 (bit 11) and the open-files limit.
        let status = String(decoding: try Kernel.readFile("/proc/\(pid)/status"), as: UTF8.self)
        #expect(status.contains("ShdPnd:\t0000000000000800\n"), "\(status)")
        let limits = String(decoding: try Kernel.readFile("/proc/\(pid)/limits"), as: UTF8.self)
        #expect(limits.split(separator: "\n").first { $0.hasPrefix("Max open files") }?.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first == "900", "\(limits)")
        // Its signal handler answers, its memory checks out (and the pipe's), its threads tick on.
        kill(pid, SIGUSR1)
        let second = try await CheckpointedScenario.awaitCheck(2, in: scenario.log)
        #expect(second.contains(" PASS "), "\(second)")
        #expect(CheckpointedScenario.value("handled", in: second) == "2")
        try await Task.sleep(for: .milliseconds(300))
        kill(pid, SIGUSR1)
        let third = try await CheckpointedScenario.awaitCheck(3, in: scenario.log)
        #expect(third.contains(" PASS "), "\(third)")
        let ticks = [second, third].map { Int(CheckpointedScenario.value("ticks", in: $0) ?? "") ?? -1 }
        #expect(ticks[1] >= ticks[0] + 10, "the ticker ticks every 10 ms: \(ticks)")
        let workers = [second, third].map { (CheckpointedScenario.value("workers", in: $0) ?? "").split(separator: ",").compactMap { Int($0) } }
        #expect(workers[0].count == 3 && zip(workers[0], workers[1]).allSatisfy { $0 < $1 }, "\(workers)")
        // The log continued where the original left it: the first check is still there.
        let lines = try String(contentsOfFile: scenario.log, encoding: .utf8).split(separator: "\n")
        #expect(lines.first == "START" && lines.dropFirst().first?.hasPrefix("CHECK n=1 PASS") == true)
    }

    @Test func restoreFromAnIncrementalImageReadsTheWholeChain() async throws {
        let scenario = try await CheckpointedScenario(mib: 8, workers: 1, incremental: true)
        defer { scenario.remove() }
        #expect(scenario.manifest.kind == .incremental)
        let inherited = scenario.manifest.mappings.flatMap(\.pages).filter { $0.state == .inherited }.reduce(0) { $0 + $1.end - $1.start }
        #expect(inherited >= 8 << 20, "the patterned area is inherited from the full image")
        scenario.killOriginal()
        let restorer = try Restorer(image: CheckpointImage.open(scenario.image))
        #expect(restorer.chain.images.count == 2)
        try await Self.restoreAndCheckThird(restorer, scenario)
    }

    @Test("a compressed chain (full and incremental, zstd) restores byte-exact and passes the self-check")
    func restoreFromACompressedChain() async throws {
        let scenario = try await CheckpointedScenario(mib: 8, workers: 1, incremental: true, compression: .zstd)
        defer { scenario.remove() }
        scenario.killOriginal()
        let restorer = try Restorer(image: CheckpointImage.open(scenario.image))
        let chain = restorer.chain
        #expect(chain.images.count == 2 && chain.images.allSatisfy { $0.compression == .zstd })
        // The patterned memory compresses: frames, not pages, in the full image.
        let full = chain.images[1]
        #expect(full.runs.contains { $0.isCompressed } && full.manifest.pageIndex.bytes < UInt64(full.storedPages * full.manifest.pageSize))
        #expect(CheckpointImage.verifyChain(scenario.image).isEmpty)
        try await Self.restoreAndCheckThird(restorer, scenario)
    }

    /// Restores with every page compared to the chain's before the process runs, then asks the
    /// restored scenario for its third self-check: PASS, with the three signals it was sent.
    static func restoreAndCheckThird(_ restorer: Restorer, _ scenario: CheckpointedScenario) async throws {
        let chain = restorer.chain, pid = scenario.child.pid
        _ = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ") }
        })
        defer { endRestored(pid) }
        kill(pid, SIGUSR1)
        let third = try await CheckpointedScenario.awaitCheck(3, in: scenario.log)
        #expect(third.contains(" PASS ") && CheckpointedScenario.value("handled", in: third) == "3", "\(third)")
    }

    @Test func aTakenPidGivesOneClearLine() async throws {
        let scenario = try await CheckpointedScenario(mib: 1, workers: 1)
        defer { scenario.remove() }
        let pid = scenario.child.pid
        let restorer = try Restorer(image: CheckpointImage.open(scenario.image))
        await #expect(throws: RestoreError.pidTaken(pid, holder: Restorer.describeHolder(pid))) { try await restorer.restore() }
        let run = try await ToolRun(ToolRun.mitosis, ["restore", scenario.image])
        #expect(run.status == 1)
        #expect(run.standardError.hasPrefix("mitosis: pid \(pid) is taken by process \(pid) (mitosis-scenari"), "\(run.standardError)")
        #expect(run.standardError.split(separator: "\n").count == 1)
        // The original was not touched: it still answers.
        kill(pid, SIGUSR1)
        #expect(try await CheckpointedScenario.awaitCheck(2, in: scenario.log).contains(" PASS "))
    }

    @Test func aRestoreFailingHalfwayLeavesNoProcess() async throws {
        let scenario = try await CheckpointedScenario(mib: 4, workers: 1)
        defer { scenario.remove() }
        let pid = scenario.child.pid
        scenario.killOriginal()
        // Damage one run of page data after the image was opened: the fill fails mid-way.
        let restorer = try Restorer(image: CheckpointImage.open(scenario.image))
        let data = scenario.image + "/pages.data"
        var bytes = try Synthetic.bytes(data)
        bytes[bytes.count / 2] ^= 0xff
        try Synthetic.overwrite(data, bytes)
        do {
            _ = try await restorer.restore()
            Issue.record("the restore succeeded on damaged pages")
            endRestored(pid)
        } catch let RestoreError.failed(step, detail) {
            #expect(step.hasPrefix("reading the image's pages"), "\(step)")
            #expect(detail.contains("checksum mismatch"), "\(detail)")
        }
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "the husk was killed and reaped")
    }

    @Test func checkListsWhatIsRefusedAndWhy() async throws {
        let scenario = try await CheckpointedScenario(mib: 1, workers: 1)
        defer { scenario.remove() }
        // A process with its harness pipes (fds 0 and 1) is refused by name.
        let piped = try await ScenarioProcess("idle")
        defer { piped.stop() }
        let pipedImage = scenario.scratch.path + "/piped"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", "\(piped.pid)", "--images", pipedImage])
        #expect(dump.status == 0, "\(dump.standardError)")
        let check = try await ToolRun(ToolRun.mitosis, ["restore", "--check", pipedImage])
        #expect(check.status == 1)
        #expect(check.standardOutput.contains("fd 0 (pipe:["), "\(check.standardOutput)")
        #expect(check.standardOutput.contains("the pipe's other end is outside the process"))
        let restore = try await ToolRun(ToolRun.mitosis, ["restore", pipedImage])
        #expect(restore.status == 1)
        #expect(restore.standardError.hasPrefix("mitosis: \(pipedImage) cannot be restored here: fd 0 (pipe:["), "\(restore.standardError)")
        #expect(restore.standardError.split(separator: "\n").count == 1)

        // The restorable one says so.
        let good = try await ToolRun(ToolRun.mitosis, ["restore", "--check", scenario.image])
        #expect(good.status == 0 && good.standardOutput.contains("restorable here"), "\(good.standardOutput)")

        // A version 1 image reads, but is refused for restore.
        let manifestPath = scenario.image + "/manifest.json"
        var manifest = try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: manifestPath)))
        let original = manifest
        manifest.formatVersion = 1
        manifest.restore = nil
        try JSONOutput.encoder().encode(manifest).write(to: URL(fileURLWithPath: manifestPath))
        try Synthetic.resign(scenario.image)
        #expect(try CheckpointImage.open(scenario.image).manifest.formatVersion == 1)
        let old = try await ToolRun(ToolRun.mitosis, ["restore", scenario.image])
        #expect(old.status == 1)
        #expect(old.standardError.contains("image: format version 1 records no restore state"), "\(old.standardError)")

        // Another kernel's vDSO, and an executable that is gone.
        manifest = original
        manifest.restore?.vdso.xxh64 = "0123456789abcdef"
        manifest.restore?.executable = "/nonexistent/mitosis-exe"
        try JSONOutput.encoder().encode(manifest).write(to: URL(fileURLWithPath: manifestPath))
        try Synthetic.resign(scenario.image)
        let foreign = try await ToolRun(ToolRun.mitosis, ["restore", "--check", "--json", scenario.image])
        #expect(foreign.status == 1)
        let report = try JSONSerialization.jsonObject(with: Data(foreign.standardOutput.utf8)) as? [String: Any]
        let subjects = (report?["refusals"] as? [[String: Any]])?.compactMap { $0["subject"] as? String } ?? []
        #expect(subjects == ["vDSO", "executable"], "\(foreign.standardOutput)")
    }

    @Test func killingMitosisRestoreAtAnyMomentLeavesNoHusk() async throws {
        let scenario = try await CheckpointedScenario(mib: 64, workers: 2)
        defer { scenario.remove() }
        let pid = scenario.child.pid
        scenario.killOriginal()
        var completed = 0, interrupted = 0
        for delay in [0, 1, 3, 6, 10, 20, 40, 70, 110, 160, 250] {
            let run = try ToolRun.start(ToolRun.mitosis, ["restore", scenario.image])
            try await Task.sleep(for: .milliseconds(delay + 30))  // the CLI takes some 30 ms to start
            run.signal(SIGKILL)
            let status = ChildProcess.exitCode(of: try await Blocking.run { run.wait() })
            // The husk is killed by PTRACE_O_EXITKILL (or its parent-death signal) and reaped by
            // init; a restore that finished first left a running process, which this test ends.
            let deadline = ContinuousClock.now + .seconds(5)
            try await Task.sleep(for: .milliseconds(100))
            var state = Self.state(of: pid)
            if status != 128 + SIGKILL || (state != nil && Self.isComplete(pid, like: scenario.manifest)) {
                completed += 1  // it finished before the kill: a running restored process, ended here
                kill(pid, SIGKILL)
            } else {
                interrupted += 1
            }
            while state != nil, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
                state = Self.state(of: pid)
            }
            #expect(state == nil, "after a kill at \(delay) ms, pid \(pid) is still there (state \(state ?? "?"))")
        }
        #expect(interrupted > 0, "at least one kill landed mid-restore (\(completed) restores finished first)")
    }

    /// Whether `pid` is a finished restore of `manifest` (untraced, every thread, its log back),
    /// rather than a half-built husk.
    static func isComplete(_ pid: Int32, like manifest: CheckpointManifest) -> Bool {
        let tasks = (try? Kernel.listDirectory("/proc/\(pid)/task"))?.count ?? 0
        return tasks == manifest.threads.count && (try? TargetHealth.tracer(of: pid)) == 0
            && (try? Kernel.readLink("/proc/\(pid)/fd/3"))?.hasSuffix("scenario.log") == true
    }

    /// The scheduler state letter of `pid`, nil when no such process exists.
    static func state(of pid: Int32) -> String? {
        guard let text = try? Kernel.readFile("/proc/\(pid)/stat") else { return nil }
        return ProcStat(parsing: String(decoding: text, as: UTF8.self)).map { String($0.state) }
    }

    @Test func interruptedSystemCallsResumeAsTheKernelWould() {
        func registers(rax: Int64, origRax: Int64) -> GeneralRegisters {
            GeneralRegisters(r15: 0, r14: 0, r13: 0, r12: 0, rbp: 0, rbx: 0, r11: 0, r10: 0, r9: 0, r8: 0,
                             rax: UInt64(bitPattern: rax), rcx: 0, rdx: 0, rsi: 0, rdi: 0, origRax: UInt64(bitPattern: origRax),
                             rip: 0x1002, cs: 0, eflags: 0, rsp: 0, ss: 0, fsBase: 0, gsBase: 0, ds: 0, es: 0, fs: 0, gs: 0)
        }
        for code in [-512, -513, -514] as [Int64] {
            let resumed = registers(rax: code, origRax: 230).resumingInterruptedCall
            #expect(resumed.rip == 0x1000 && resumed.rax == 230 && resumed.origRax == UInt64.max)
        }
        let restartBlock = registers(rax: -516, origRax: 35).resumingInterruptedCall
        #expect(restartBlock.rip == 0x1002 && Int64(bitPattern: restartBlock.rax) == -4)
        let running = registers(rax: 7, origRax: -1).resumingInterruptedCall
        #expect(running.rip == 0x1002 && running.rax == 7)
        let finished = registers(rax: -11, origRax: 0).resumingInterruptedCall
        #expect(finished.rip == 0x1002 && Int64(bitPattern: finished.rax) == -11 && finished.origRax == UInt64.max)
    }

    @Test func memoryBoundsParseFromStatAndRefuseTruncatedLines() {
        var fields = (3...52).map { "\($0)" }
        fields[0] = "S"
        let line = "42 (a) b (c)) " + fields.joined(separator: " ") + "\n"
        let bounds = RestoreRecord.MemoryBounds(procStat: line, brk: 99)
        #expect(bounds == RestoreRecord.MemoryBounds(startCode: 26, endCode: 27, startData: 45, endData: 46, startBrk: 47, brk: 99,
                                                     startStack: 28, argStart: 48, argEnd: 49, envStart: 50, envEnd: 51))
        #expect(RestoreRecord.MemoryBounds(procStat: "42 (a) S 1 2 3", brk: 0) == nil)
        #expect(RestoreRecord.MemoryBounds(procStat: "no parenthesis", brk: 0) == nil)
        #expect(RestoreRecord.MemoryBounds(procStat: String(line.dropLast(8)), brk: 0) == nil)
    }
}
