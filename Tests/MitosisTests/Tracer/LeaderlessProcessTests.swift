import Foundation
import Testing
@testable import MitosisImage
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisStacks
@testable import MitosisTrace

/// A process whose main thread called `pthread_exit` while other threads run on: the kernel
/// keeps its thread-group leader as a zombie (State Z, empty /proc/PID/maps and fd) until the
/// last thread exits. It is a live process, not a zombie: inspect, stacks, freeze, dump and track
/// all work on it, through its live threads.
@Suite("A process whose main thread has exited")
struct LeaderlessProcessTests {
    /// The `leaderless` scenario, its main thread confirmed a zombie, its live threads and the
    /// facts it reported at start (its pages and pipe).
    private func leaderless() async throws -> (child: ScenarioProcess, live: [Int32], pages: UInt64, pageCount: Int, pipe: [Int32]) {
        let child = try await ScenarioProcess("leaderless")
        let worker = Int32(try child.intFact("worker_tid"))
        let pages = UInt64(try child.fact("pages").dropFirst(2), radix: 16)!
        let pageCount = try child.intFact("page_count")
        let pipe = [Int32(try child.intFact("pipe_read")), Int32(try child.intFact("pipe_write"))]
        try await child.send("leader")
        #expect(try child.fact("leader_state") == "Z")
        let states = try TargetHealth.threadStates(of: child.pid)
        #expect(states[child.pid] == "Z")
        #expect(states[worker] != nil)
        // What made it look like a zombie: the leader's own /proc entries are empty.
        #expect(try Kernel.readFile("/proc/\(child.pid)/maps").isEmpty)
        #expect(try Kernel.listDirectory("/proc/\(child.pid)/fd").isEmpty)
        return (child, states.keys.filter { $0 != child.pid }.sorted(), pages, pageCount, pipe)
    }

    @Test("inspect reads its memory, descriptors and threads, and lists the main thread as exited")
    func inspect() async throws {
        let (child, live, pages, pageCount, pipe) = try await leaderless()
        defer { child.stop() }
        #expect(Kernel.procEntry(child.pid) == live[0])
        let model = try Introspector.inspect(pid: child.pid)
        #expect(model.pid == child.pid)
        #expect(model.threads.map(\.tid) == [child.pid] + live)
        #expect(model.threads.first?.state == "Z")
        #expect(model.threads.dropFirst().allSatisfy { $0.state != "Z" })
        // The kernel may merge the pages' mapping with an anonymous neighbour.
        #expect(model.maps.contains { $0.start <= pages && $0.end >= pages + UInt64(pageCount) * 4096 && $0.perms == "rw-p" })
        #expect(model.fds.map(\.fd) == [0, 1, 2] + pipe)
        #expect(model.fds.first { $0.fd == pipe[0] }?.kind == .pipe)
        #expect(model.identity.exe?.hasSuffix("/mitosis-scenario") == true)
        #expect(!model.namespaces.isEmpty)
        let cli = try await ToolRun(ToolRun.mitosis, ["inspect", "\(child.pid)", "--json"])
        #expect(cli.status == 0, "\(cli.standardError)")
        let threads = try #require(try JSONSerialization.jsonObject(with: Data(cli.standardOutput.utf8)) as? [String: Any])["threads"] as? [[String: Any]]
        #expect(threads?.first?["tid"] as? Int == Int(child.pid) && threads?.first?["state"] as? String == "Z")
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
    }

    @Test("freeze holds every live thread and leaves the exited main thread alone; stacks walk each")
    func freezeAndStacks() async throws {
        let (child, live, _, _, _) = try await leaderless()
        defer { child.stop() }
        let held = try await withFrozenProcess(child.pid) { tracer async throws in
            let states = try TargetHealth.threadStates(of: child.pid)
            #expect(states[child.pid] == "Z")
            #expect(live.allSatisfy { states[$0] == "t" }, "\(states)")
            return await tracer.threads(of: child.pid)
        }
        #expect(held == live)
        await #expect(try TargetHealth.runsFreely(child.pid))
        let freeze = try await ToolRun(ToolRun.mitosis, ["freeze", "\(child.pid)"])
        #expect(freeze.status == 0, "\(freeze.standardError)")
        #expect(freeze.standardOutput.hasPrefix("froze \(live.count) threads of 1 process(es)"))
        let stacks = try await ProcessStacks.capture(pid: child.pid)
        #expect(stacks.threads.map(\.tid) == live)
        for thread in stacks.threads {
            #expect(thread.truncated == nil, "thread \(thread.tid) walked to its end")
            #expect(thread.frames.contains { $0.function == "start_thread" }, "thread \(thread.tid): \(thread.frames.map(\.function))")
        }
        let cli = try await ToolRun(ToolRun.mitosis, ["stacks", "\(child.pid)"])
        #expect(cli.status == 0, "\(cli.standardError)")
        #expect(cli.standardOutput.contains("leaderless_worker"))
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
    }

    @Test("dump and track checkpoint it byte-exactly and record the main thread as exited",
          arguments: ["uffd-wp", "hash"])
    func checkpoint(tracking: String) async throws {
        let (child, live, pages, pageCount, _) = try await leaderless()
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let before = try TargetHealth(pid: live[0])
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", "\(child.pid)", "--images", scratch.path + "/dump", "--track", tracking])
        #expect(dump.status == 0, "\(dump.standardError)")
        let track = try await ToolRun(ToolRun.mitosis, ["track", "\(child.pid)", "--images", scratch.path + "/chain",
                                                        "--track", tracking, "--count", "2", "--interval", "50"])
        #expect(track.status == 0, "\(track.standardError)")
        for image in [scratch.path + "/dump", scratch.path + "/chain/2"] {
            let opened = try CheckpointImage.open(image)
            let manifest = opened.manifest
            #expect(manifest.pid == child.pid)
            #expect(manifest.threads.map(\.tid) == live, "the live threads' states are recorded")
            #expect(manifest.process?.threads.first { $0.tid == child.pid }?.state == "Z", "the main thread is recorded as exited")
            for page in 0..<pageCount {
                let bytes = try opened.read(address: pages + UInt64(page * 4096), length: 4096)
                #expect(bytes == [UInt8](repeating: UInt8(page * 7 + 1), count: 4096), "page \(page) of \(image)")
            }
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: live[0]) == before)
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
    }

    @Test("when the thread it reads through exits, a long-lived handle reads through another")
    func threadExitsDuringSession() async throws {
        let (child, live, pages, _, _) = try await leaderless()
        defer { child.stop() }
        #expect(live.count == 2)
        let target = try TargetProcess(pid: child.pid)
        #expect(target.process.entry == live[0])
        try await child.send("end-worker")
        #expect(try TargetHealth.threadStates(of: child.pid).keys.sorted() == [child.pid, live[1]])
        #expect(try ProcessReader.mappings(target).contains { $0.start <= pages && pages < $0.end })
        #expect(target.process.entry == live[1])
        try target.requireAlive()
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
    }

    @Test("a process whose every thread has exited is still refused as a zombie")
    func zombieRefused() async throws {
        let child = try await ScenarioProcess("zombie")
        defer { child.stop() }
        let zombie = Int32(try child.intFact("zombie"))
        #expect(Kernel.procEntry(zombie) == zombie)
        #expect(throws: MitosisError.zombie(zombie)) { try TargetProcess(pid: zombie) }
        #expect(throws: MitosisError.zombie(zombie)) { try Introspector.inspect(pid: zombie) }
    }
}
