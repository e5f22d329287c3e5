import Foundation
import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisTrace

@Suite("Demo target")
struct DemoTargetTests {
    private func start() async throws -> ScenarioProcess {
        // The demo ignores its arguments; ScenarioProcess passes a name first.
        try await ScenarioProcess("demo", executable: ScenarioProcess.executable("mitosis-demo-target"))
    }

    @Test("holds the descriptors, threads and memory it reports")
    func holdsWhatItReports() async throws {
        let demo = try await start()
        defer { demo.stop() }
        let pid = demo.pid
        let path = try demo.fact("file")
        #expect(path == "/tmp/mitosis-demo-\(pid).data" || path.hasSuffix("/mitosis-demo-\(pid).data"))
        #expect(try demo.fact("file_fd") == "3")
        #expect(try Kernel.readLink("/proc/\(pid)/fd/3") == path)
        let fdinfo = String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/3"), as: UTF8.self)
        #expect(fdinfo.hasPrefix("pos:\t1000\n"))
        #expect(try demo.fact("pipe") == "4,5")
        #expect(try demo.fact("socketpair") == "6,7")
        #expect(try demo.fact("listener") == "8")
        #expect(try demo.fact("client") == "9")
        #expect(try demo.fact("server") == "10")
        #expect(try demo.fact("eventfd") == "11")
        #expect(try Kernel.readLink("/proc/\(pid)/fd/4").hasPrefix("pipe:["))
        #expect(try Kernel.readLink("/proc/\(pid)/fd/4") == Kernel.readLink("/proc/\(pid)/fd/5"))
        for fd in 6...10 { #expect(try Kernel.readLink("/proc/\(pid)/fd/\(fd)").hasPrefix("socket:[")) }
        #expect(try Kernel.readLink("/proc/\(pid)/fd/11") == "anon_inode:[eventfd]")
        #expect(try Kernel.listDirectory("/proc/\(pid)/fd").count == 12)
        #expect(try Int(demo.fact("port"))! > 0)

        var names: [String] = []
        for tid in try Kernel.listDirectory("/proc/\(pid)/task") {
            names.append(String(decoding: try Kernel.readFile("/proc/\(pid)/task/\(tid)/comm"), as: UTF8.self)
                .trimmingCharacters(in: "\n"))
        }
        #expect(names.sorted() == ["demo-events", "demo-net", "demo-pipe", "demo-stdin", "demo-ticker", "mitosis-demo-ta"])

        let maps = String(decoding: try Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self)
        let fileMap = String(try demo.fact("file_map").dropFirst(2))
        #expect(maps.split(separator: "\n").contains { $0.hasPrefix(fileMap + "-") && $0.hasSuffix(path) })

        // The ticker rewrites the mapped file's first word every 100 ms.
        let address = UInt64(try demo.fact("file_map").dropFirst(2), radix: 16)!
        func counter() throws -> UInt64 {
            var value: UInt64 = 0
            _ = try withUnsafeMutableBytes(of: &value) { try Kernel.readMemory(pid: pid, address: address, into: $0) }
            return value
        }
        let first = try counter()
        var second = first
        for _ in 0..<300 where second == first {
            try await Task.sleep(for: .microseconds(10_000))
            second = try counter()
        }
        #expect(second > first, "counter \(first) then \(second)")
    }

    @Test("freezes and thaws like any target")
    func freezes() async throws {
        let demo = try await start()
        defer { demo.stop() }
        let before = try TargetHealth(pid: demo.pid)
        let count = try await withFrozenProcess(demo.pid) { await $0.threads.count }
        #expect(count == 6)
        await #expect(try TargetHealth.runsFreely(demo.pid))
        #expect(try TargetHealth(pid: demo.pid) == before)
    }

    @Test("exits cleanly when stdin closes and on SIGTERM, removing its data file", arguments: [false, true])
    func exits(bySignal: Bool) async throws {
        let demo = try ChildProcess(executable: ScenarioProcess.executable("mitosis-demo-target"))
        let line = try await Blocking.run { demo.readLine(timeout: .seconds(20)) }
        #expect(line?.hasPrefix("READY pid=\(demo.pid) ") == true)
        // The demo keeps its data file in $TMPDIR (or /tmp), as the test runner passes it on.
        let directory = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        let path = "\(directory)/mitosis-demo-\(demo.pid).data"
        #expect(FileManager.default.fileExists(atPath: path))
        if bySignal { demo.signal(SIGTERM) } else { demo.closeInput() }
        let status = try await Blocking.run { demo.wait() }
        #expect(ChildProcess.exitCode(of: status) == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}

/// `mitosis demo`, what the README's first command runs: every part answers, both brought-back
/// processes pass their self-check, and nothing is left running.
@Suite("mitosis demo")
struct DemoCommandTests {
    @Test("restores a killed process and promotes a warm standby, each passing its self-check, leaving no process")
    func demoRunsEveryPart() async throws {
        let run = try await ToolRun(ToolRun.mitosis, ["demo"])
        #expect(run.status == 0, "\(run.standardError)")
        let lines = run.standardOutput.split(separator: "\n").map(String.init)
        for heading in ["== inspect", "== graph", "== stacks", "== checkpoints", "== restore", "== hot standby"] {
            #expect(lines.contains { $0.hasPrefix(heading) }, "no part \(heading)")
        }
        let restored = try #require(lines.first { $0.hasPrefix("restored  ") }, "\(run.standardOutput.suffix(2000))")
        #expect(restored.contains(": CHECK n=2 PASS "), "\(restored)")
        let promoted = try #require(lines.first { $0.hasPrefix("promoted  ") }, "\(run.standardOutput.suffix(2000))")
        #expect(promoted.contains(": CHECK n=2 PASS "), "\(promoted)")
        #expect(lines.contains { $0.hasPrefix("promoted epoch ") && $0.contains(" from the warm clone in ") }, "\(run.standardOutput.suffix(1500))")
        // The promoted process (in its pid namespace) and the namespace's init are gone with the demo.
        let hostPid = try #require(Int32(promoted.dropFirst("promoted  ".count).prefix { $0 != ":" }))
        let deadline = ContinuousClock.now + .seconds(5)
        while FileManager.default.fileExists(atPath: "/proc/\(hostPid)"), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(!FileManager.default.fileExists(atPath: "/proc/\(hostPid)"))
    }
}
