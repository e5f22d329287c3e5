import Foundation
import Glibc
import Testing
@testable import MitosisModel

/// `mitosis inspect` run as users run it: the built binary, its stdout, stderr and exit code.
@Suite("mitosis inspect CLI")
struct InspectCommandTests {
    struct Run {
        let status: Int32
        let stdout: Data
        let stderr: String
    }

    static func mitosis(_ arguments: [String]) async throws -> Run {
        let run = try await ToolRun(ToolRun.mitosis, arguments)
        return Run(status: run.status, stdout: Data(run.standardOutput.utf8), stderr: run.standardError)
    }

    @Test("--json: the documented keys and types, and every exact fact of the fds scenario")
    func json() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        try await child.waitUntilBlocked()
        let before = try TargetHealth(pid: child.pid)
        let run = try await Self.mitosis(["inspect", String(child.pid), "--json"])
        #expect(run.status == 0 && run.stderr.isEmpty)

        // The schema as a client without Mitosis sees it.
        let object = try #require(try JSONSerialization.jsonObject(with: run.stdout) as? [String: Any])
        #expect(Set(object.keys) == ["pid", "identity", "threads", "namespaces", "cgroups", "limits", "maps", "fds", "ipc"])
        #expect(object["pid"] as? Int == Int(child.pid))
        let thread = try #require((object["threads"] as? [[String: Any]])?.first)
        #expect(thread["tid"] as? Int == Int(child.pid) && thread["name"] as? String == "mitosis-scenari" && thread["state"] as? String == "S")
        let maps = try #require(object["maps"] as? [[String: Any]])
        let mapAddress = try child.intFact("map_addr")
        let mapped = try #require(maps.first { ($0["start"] as? Int) == mapAddress })
        #expect(mapped["end"] as? Int == mapAddress + 8192 && mapped["perms"] as? String == "r--s")
        #expect(mapped["offset"] as? Int == 4096 && mapped["kind"] as? String == "file")
        let dir = try child.fact("dir")
        #expect(mapped["path"] as? String == dir + "/mapped.bin")
        #expect((mapped["sizes"] as? [String: Any])?["size"] as? Int == 8192)
        #expect(mapped["vm_flags"] is [String])
        let fds = try #require(object["fds"] as? [[String: Any]])
        func fd(_ key: String) throws -> [String: Any] {
            let number = try child.intFact(key)
            return try #require(fds.first { $0["fd"] as? Int == number })
        }
        let expectedKinds = ["file": "file", "dir_fd": "dir", "pipe_r": "pipe", "sp0": "socket", "eventfd": "eventfd",
                             "epoll": "epoll", "timerfd": "timerfd", "signalfd": "signalfd", "inotify": "inotify",
                             "memfd": "memfd", "pidfd": "pidfd", "fifo": "fifo", "mqueue": "mqueue", "ptmx": "tty",
                             "null": "char_device"]
        for (key, kind) in expectedKinds { #expect(try fd(key)["kind"] as? String == kind, "\(key)") }
        let file = try fd("file")
        #expect(file["path"] as? String == dir + "/data.bin")
        #expect(file["position"] as? Int == 1234 && file["flags"] as? Int == 0o2102002)
        #expect(file["flag_names"] as? [String] == ["O_RDWR", "O_APPEND", "O_LARGEFILE", "O_CLOEXEC"])
        #expect(try fd("sp0")["inode"] as? Int == (try child.intFact("sp0_ino")))
        #expect(try fd("pipe_r")["inode"] as? Int == (try child.intFact("pipe_r_ino")))
        let eventfd = try fd("eventfd")["eventfd"] as? [String: Any]
        #expect(eventfd?["counter"] as? Int == 142)

        // The whole document decodes back into the model and holds the same exact facts.
        let model = try JSONOutput.decoder().decode(ProcessModel.self, from: run.stdout)
        try FdsScenarioFacts(child: child).check(model)

        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
    }

    @Test("text output: summary, threads, maps and fds tables")
    func text() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        try await child.waitUntilBlocked()
        let run = try await Self.mitosis(["inspect", String(child.pid)])
        #expect(run.status == 0 && run.stderr.isEmpty)
        let text = String(decoding: run.stdout, as: UTF8.self)
        #expect(text.hasPrefix("process \(child.pid) (mitosis-scenari)  state S  ppid \(getpid())"))
        for section in ["\nTHREADS\n", "\nMAPS\n", "\nFDS\n", "\nIPC\n"] { #expect(text.contains(section)) }
        let lines = text.split(separator: "\n")
        let fileLine = try #require(lines.first { $0.hasPrefix("  \(try child.intFact("file")) ") })
        #expect(fileLine.contains("file") && fileLine.contains("O_RDWR|O_APPEND|O_CLOEXEC") && fileLine.contains(" 1234 "))
        let dir = try child.fact("dir")
        #expect(fileLine.hasSuffix(dir + "/data.bin"))
        let eventLine = try #require(lines.first { $0.hasPrefix("  \(try child.intFact("eventfd")) ") })
        #expect(eventLine.hasSuffix("counter=142"))
        let mapLine = try #require(lines.first { $0.hasPrefix("  " + String(try child.intFact("map_addr"), radix: 16) + " ") })
        #expect(mapLine.contains("r--s") && mapLine.hasSuffix("/mapped.bin"))
    }

    @Test("bad targets: one line on stderr, exit code 1", arguments: ["0", "-5", "abc", "nonexistent", "zombie", "kthread"])
    func badInput(_ argument: String) async throws {
        let child = try await ScenarioProcess("zombie")
        defer { child.stop() }
        let missing = try ProcessReaderTests.unusedPID()
        let (pid, message): (String, String)
        switch argument {
        case "nonexistent": (pid, message) = (String(missing), "no process with pid \(missing)")
        case "zombie":
            let zombie = try child.fact("zombie")
            (pid, message) = (zombie, "process \(zombie) is a zombie")
        case "kthread":
            guard IntrospectorTests.kthreaddVisible else { return }  // inside a pid namespace, 2 is not kthreadd
            (pid, message) = ("2", "process 2 is a kernel thread")
        default: (pid, message) = (argument, "'\(argument)' is not a valid process id")
        }
        let run = try await Self.mitosis(["inspect", pid, "--json"])
        #expect(run.status == 1)
        #expect(run.stdout.isEmpty)
        #expect(run.stderr.hasPrefix("mitosis: " + message), "\(run.stderr)")
        #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.hasSuffix("\n"))
    }
}
