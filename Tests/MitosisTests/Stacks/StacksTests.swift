import Foundation
import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisStacks
@testable import MitosisTrace

@Suite("Stacks")
struct StacksTests {
    /// The functions of frames 1…4 of each thread of the `stacks` scenario, innermost first.
    static let chains: [String: [String]] = [
        "alpha": ["alpha_three", "alpha_two", "alpha_one", "run_alpha"],
        "beta": ["beta_three", "beta_two", "beta_one", "run_beta"],
        "gamma": ["gamma_three", "gamma_two", "gamma_one", "run_gamma"],
    ]

    @Test("unwinds three threads of a C program to their exact call chains, and leaves it running")
    func cChains() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let executable = try Kernel.readLink("/proc/\(child.pid)/exe")
        let buildID = try await Self.buildID(of: executable)
        for name in ["alpha", "beta", "gamma"] {
            let thread = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact(name)) })
            #expect(thread.name == name)
            #expect(thread.truncated == nil)
            // Frame 0 is libc's system call wrapper; then the chain, all in the executable.
            let chain = thread.frames.dropFirst(name == "gamma" ? 2 : 1).prefix(4)
            #expect(chain.map(\.function) == Self.chains[name]!)
            #expect(chain.allSatisfy { $0.module == executable && $0.buildId == buildID })
            #expect(thread.frames.first?.module?.hasSuffix("/libc.so.6") == true)
        }
        let alpha = try #require(stacks.threads.first { $0.name == "alpha" })
        #expect(alpha.frames[0].function == "pause")
        let beta = try #require(stacks.threads.first { $0.name == "beta" })
        #expect(beta.frames[0].function == "read")
        #expect(stacks.threads.map(\.tid) == stacks.threads.map(\.tid).sorted())
        #expect(stacks.threads.count == 4)
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")
    }

    @Test("a frozen tracer's stacks() gives the same frames as a capture")
    func tracerStacks() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let frozen = try await withFrozenProcess(child.pid) { tracer in try await tracer.stacks() }
        let captured = try await ProcessStacks.capture(pid: child.pid)
        // The main thread may still be finishing its READY line; the workers sit still.
        let workers = { (stacks: [ThreadStack]) in stacks.filter { Self.chains[$0.name] != nil } }
        #expect(workers(frozen).count == 3)
        #expect(workers(frozen) == workers(captured.threads))
    }

    @Test("demangles C++ names: namespaces, templates, parameter types")
    func cplusplus() async throws {
        let child = try await ScenarioProcess("cpp", executable: ScenarioProcess.executable("mitosis-scenario-cpp"))
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let thread = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("tid")) })
        #expect(thread.frames.dropFirst().prefix(4).map(\.function) == [
            "mitosis_scenario::Deep<int>::third(int)", "mitosis_scenario::Deep<int>::second(int)",
            "mitosis_scenario::first(int)", "run(void*)",
        ])
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("ping")
    }

    @Test("demangles Swift names")
    func swift() async throws {
        let child = try await ScenarioProcess("swift", executable: ScenarioProcess.executable("mitosis-scenario-swift"))
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let thread = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("tid")) })
        #expect(thread.frames.dropFirst().prefix(4).map(\.function) == [
            "static mitosis_scenario_swift.Chain.third(Swift.Int) -> ()",
            "static mitosis_scenario_swift.Chain.second(Swift.Int) -> ()",
            "static mitosis_scenario_swift.Chain.first(Swift.Int) -> ()",
            "mitosis_scenario_swift.threadMain(Swift.Optional<Swift.UnsafeMutableRawPointer>) -> Swift.Optional<Swift.UnsafeMutableRawPointer>",
        ])
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("ping")
    }

    @Test("a stripped PIE executable: frames with no symbol give the module and its ELF address")
    func strippedExecutable() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let original = ScenarioProcess.executable("mitosis-scenario")
        let stripped = directory + "/scenario-stripped"
        try FileManager.default.copyItem(atPath: original, toPath: stripped)
        try await Self.run("/usr/bin/strip", ["--strip-all", stripped])
        let symbols = try await Self.symbols(of: original, dynamic: false)
        // Another test's fork may still hold the just-written file open (until its exec):
        // exec then fails with ETXTBSY for a moment.
        var spawned: ScenarioProcess?
        for attempt in 1...50 where spawned == nil {
            do { spawned = try await ScenarioProcess("stacks", executable: stripped) } catch where "\(error)".contains("Text file busy") && attempt < 50 {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        let child = try #require(spawned)
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let alpha = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("alpha")) })
        #expect(alpha.frames[0].function == "pause")  // libc keeps its names
        for (frame, name) in zip(alpha.frames.dropFirst().prefix(4), Self.chains["alpha"]!) {
            #expect(frame.function == nil)
            #expect(frame.module == stripped)
            // The return address, as an address of the ELF file, lies inside the function.
            let symbol = try #require(symbols[name])
            #expect(frame.offset > symbol.address && frame.offset <= symbol.address + symbol.size)
            #expect(frame.label.hasPrefix("scenario-stripped+0x"))
        }
        #expect(alpha.truncated == nil)
    }

    @Test("a deleted executable is still symbolized, through /proc/PID/map_files")
    func deletedExecutable() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let copy = directory + "/scenario-deleted"
        try FileManager.default.copyItem(atPath: ScenarioProcess.executable("mitosis-scenario"), toPath: copy)
        let child = try await ScenarioProcess("stacks", executable: copy)
        defer { child.stop() }
        try FileManager.default.removeItem(atPath: copy)
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let gamma = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("gamma")) })
        #expect(gamma.frames.dropFirst(2).prefix(4).map(\.function) == Self.chains["gamma"]!)
        #expect(gamma.frames[2].module == copy)
    }

    @Test("a stripped non-PIE executable falls back to .dynsym")
    func strippedNonPIE() async throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Scenario").path
        let binary = directory + "/scenario-nopie"
        // -rdynamic exports the chain into .dynsym; -s then drops .symtab.
        try await Self.run("/usr/bin/cc", ["-O0", "-fno-pie", "-no-pie", "-rdynamic", "-s", "-pthread", "-o", binary,
                                     sources + "/main.c", sources + "/scenario_stacks.c"])
        #expect(try await Self.run("/usr/bin/readelf", ["-h", binary]).contains("EXEC (Executable file)"))
        let symbols = try await Self.symbols(of: binary, dynamic: true)
        let child = try await ScenarioProcess("stacks", executable: binary)
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let beta = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("beta")) })
        let chain = Array(beta.frames.dropFirst().prefix(4))
        // run_beta is static: not exported, so not in .dynsym either — module and offset only.
        #expect(chain.map(\.function) == ["beta_three", "beta_two", "beta_one", nil])
        #expect(chain[3].module == binary && chain[3].label.hasPrefix("scenario-nopie+0x"))
        for frame in chain.prefix(3) {
            // Not position-independent: the pc is the ELF address itself.
            let symbol = try #require(symbols[frame.function ?? ""])
            #expect(frame.pc == symbol.address + frame.offset)
            #expect(frame.module == binary)
        }
    }

    @Test("corrupt stacks: a self-referencing frame and a wild stack pointer end the walk, nothing hangs")
    func corruptStacks() async throws {
        let child = try await ScenarioProcess("stacks_corrupt")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let cycle = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("cycle")) })
        #expect(cycle.truncated != nil)
        #expect(cycle.frames.count < 8)
        #expect(cycle.frames.contains { $0.function == "cycle_forever" })
        let wild = try #require(stacks.threads.first { $0.tid == Int32(try child.intFact("wild")) })
        #expect(wild.frames.count == 1)
        #expect(wild.frames[0].function == "run_wild")
        #expect(wild.truncated != nil)
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")
    }

    @Test("a thread running in the vDSO unwinds through the vDSO's own unwind table")
    func vdsoFrames() async throws {
        let child = try await ScenarioProcess("stacks_busy")
        defer { child.stop() }
        let spin = Int32(try child.intFact("spin"))
        var insideVDSO = 0
        for _ in 0..<20 {
            let stacks = try await ProcessStacks.capture(pid: child.pid)
            let thread = try #require(stacks.threads.first { $0.tid == spin })
            // Wherever the thread was caught, the walk reaches its start through spin_loop.
            #expect(thread.truncated == nil)
            let names = thread.frames.compactMap(\.function)
            #expect(names.firstIndex(of: "spin_loop").map { names[$0 + 1] == "run_spin" } == true)
            if thread.frames[0].module == "[vdso]" {
                insideVDSO += 1
                #expect(thread.frames[0].function?.hasSuffix("clock_gettime") == true)
                #expect(thread.frames[1].function?.hasPrefix("clock_gettime") == true)
                #expect(thread.frames[2].function == "spin_loop")
            }
        }
        #expect(insideVDSO > 0)
        await #expect(try TargetHealth.runsFreely(child.pid))
    }

    @Test("the frame limit bounds every walk")
    func frameLimit() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid, maxFrames: 2)
        #expect(stacks.threads.allSatisfy { $0.frames.count == 2 && $0.truncated == "max_frames" })
    }

    @Test("JSON has the documented shape")
    func json() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        let object = try JSONSerialization.jsonObject(with: try JSONOutput.encoder().encode(stacks)) as? [String: Any]
        let threads = try #require(object?["threads"] as? [[String: Any]])
        let alpha = try #require(threads.first { $0["name"] as? String == "alpha" })
        #expect(alpha["tid"] as? Int == (try child.intFact("alpha")))
        let frame = try #require((alpha["frames"] as? [[String: Any]])?[1])
        #expect(Set(frame.keys) == ["pc", "function", "offset", "module", "build_id"])
        #expect(frame["function"] as? String == "alpha_three")
        #expect(try JSONOutput.decoder().decode(ProcessStacks.self, from: try JSONOutput.encoder().encode(stacks)) == stacks)
    }

    @Test("sampling counts every thread's stack once per sample, as folded stacks")
    func sampling() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let profile = try await StackSampler.run(pid: child.pid, hertz: 100, duration: .milliseconds(100))
        #expect(profile.samples == 10 && profile.stopTimes.count == 10)
        #expect(profile.counts.values.reduce(0, +) == 40)
        let lines = profile.folded().split(separator: "\n")
        let alpha = try #require(lines.first { $0.hasPrefix("alpha;") })
        #expect(alpha.hasSuffix(";run_alpha;alpha_one;alpha_two;alpha_three;pause 10"))
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("ping")
    }

    @Test("sampling a process that exits keeps the samples taken so far")
    func samplingOutlivesTarget() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        // Killed after a second: at 50 Hz, samples of every thread were taken by then even on a
        // loaded machine (after 300 ms, one sample interrupted by the kill was all some runs had).
        let killer = Task {
            try await Task.sleep(for: .seconds(1))
            child.stop()
        }
        let profile = try await StackSampler.run(pid: child.pid, hertz: 50, duration: .seconds(3))
        try await killer.value
        #expect(profile.samples >= 1 && profile.samples < 150)
        #expect(profile.counts.keys.contains { $0.hasPrefix("alpha;") })
    }

    @Test("mitosis stacks: the listing, --json, and --sample … --folded")
    func command() async throws {
        let child = try await ScenarioProcess("stacks")
        defer { child.stop() }
        let alpha = try child.intFact("alpha")
        let listing = try await ToolRun(ToolRun.mitosis, ["stacks", "\(child.pid)"])
        #expect(listing.status == 0)
        #expect(listing.standardOutput.contains("TID \(alpha) (alpha):\n#0   0x"))
        #expect(listing.standardOutput.contains(" alpha_three+0x"))
        let json = try await ToolRun(ToolRun.mitosis, ["stacks", "\(child.pid)", "--json"])
        let stacks = try JSONOutput.decoder().decode(ProcessStacks.self, from: Data(json.standardOutput.utf8))
        #expect(stacks.threads.first { $0.tid == Int32(alpha) }?.frames[1].function == "alpha_three")
        let folded = try await ToolRun(ToolRun.mitosis, ["stacks", "\(child.pid)", "--sample", "50", "--duration", "0.1", "--folded"])
        #expect(folded.status == 0)
        #expect(folded.standardOutput.split(separator: "\n").contains { $0.hasPrefix("beta;") && $0.hasSuffix(";beta_one;beta_two;beta_three;read 5") })
        #expect(folded.standardError.contains("5 samples"))
        let refused = try await ToolRun(ToolRun.mitosis, ["stacks", "999999999"])
        #expect(refused.status == 1 && refused.standardError.hasPrefix("mitosis: "))
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("ping")
    }

    // MARK: Helpers

    static func temporaryDirectory() throws -> String {
        var template = Array(URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("mitosis-stacks-XXXXXX").path.utf8CString)
        guard let path = mkdtemp(&template) else { throw ScenarioError.spawn("mkdtemp") }
        return String(cString: path)
    }

    /// Runs a tool and returns its standard output; throws when it fails.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) async throws -> String {
        let run = try await ToolRun(tool, arguments)
        guard run.status == 0 else { throw ScenarioError.spawn("\(tool) exited with \(run.status): \(run.standardError)") }
        return run.standardOutput
    }

    /// Function symbols by name, from `nm` (binutils), an independent reader of the ELF file.
    static func symbols(of path: String, dynamic: Bool) async throws -> [String: (address: UInt64, size: UInt64)] {
        var result: [String: (UInt64, UInt64)] = [:]
        for line in try await run("/usr/bin/nm", (dynamic ? ["-D"] : []) + ["-S", "--defined-only", path]).split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 4, fields[2].lowercased() == "t",
                  let address = UInt64(fields[0], radix: 16), let size = UInt64(fields[1], radix: 16) else { continue }
            result[String(fields[3])] = (address, size)
        }
        return result
    }

    /// The GNU build-id of an ELF file, from `readelf -n` (binutils).
    static func buildID(of path: String) async throws -> String? {
        let text = try await run("/usr/bin/readelf", ["-n", path])
        guard let line = text.split(separator: "\n").first(where: { $0.contains("Build ID:") }) else { return nil }
        return line.split(separator: " ").last.map(String.init)
    }
}
