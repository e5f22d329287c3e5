import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// `dump --tree` and the restore of a process tree, against the `proctree` scenario
/// (Tests/Scenario/scenario_tree.c): a session leader with two children sharing its log (one
/// open file description), its listener (one socket) and an anonymous shared mapping, a pipe from
/// child A to child B, B leading its own process group.
@Suite("Process tree restore")
struct TreeRestoreTests {
    /// The started tree, its log and pids.
    struct Tree {
        let scenario: ScenarioProcess
        let log: String
        var parent: Int32 { scenario.pid }
        let a: Int32
        let b: Int32

        init(scratch: ScratchDirectory) async throws {
            log = scratch.path + "/tree.log"
            scenario = try await ScenarioProcess("proctree", [log, "120"])
            a = Int32(try scenario.intFact("a"))
            b = Int32(try scenario.intFact("b"))
            try await scenario.send("detach")
        }

        /// Sends SIGUSR1 to `pid` (to `hosts[pid]`, the pid this host sees, when the tree runs in
        /// a pid namespace of its own) and returns the CHECK line it appends.
        func check(_ pid: Int32, number: Int, hosts: [Int32: Int32]? = nil) async throws -> String {
            let target = hosts.map { $0[pid] ?? 0 } ?? pid
            guard target > 0 else { throw ScenarioError.protocolError("no pid on this host for member \(pid)") }
            kill(target, SIGUSR1)
            return try await awaitLine(prefix: "CHECK ", containing: "pid=\(pid) n=\(number) ")
        }

        /// Each member checks itself once, then A again: a ping left unread in the pipe for B,
        /// which a restored B must find. Compared with `passedBeforeDump`.
        func checkBeforeDump() async throws -> [String] {
            [try await check(a, number: 1), try await check(b, number: 1), try await check(parent, number: 1), try await check(a, number: 2)]
        }

        var passedBeforeDump: [String] {
            ["CHECK role=a pid=\(a) n=1 PASS shared=1", "CHECK role=b pid=\(b) n=1 PASS shared=2",
             "CHECK role=parent pid=\(parent) n=1 PASS shared=3", "CHECK role=a pid=\(a) n=2 PASS shared=4"]
        }

        /// After `checkBeforeDump`, a dump and a restore: B reads A's ping, then each member checks
        /// pipe, shared counter and listener again. `hosts` maps pids inside a pid namespace to
        /// this host's. Compared with `passedAfterRestore`.
        func checkAfterRestore(hosts: [Int32: Int32]? = nil) async throws -> [String] {
            [try await check(b, number: 2, hosts: hosts), try await check(a, number: 3, hosts: hosts),
             try await check(b, number: 3, hosts: hosts), try await check(parent, number: 2, hosts: hosts)]
        }

        var passedAfterRestore: [String] {
            ["CHECK role=b pid=\(b) n=2 PASS shared=5", "CHECK role=a pid=\(a) n=3 PASS shared=6",
             "CHECK role=b pid=\(b) n=3 PASS shared=7", "CHECK role=parent pid=\(parent) n=2 PASS shared=8"]
        }

        /// `mitosis dump --tree --kill` into `image`; returns once every member is gone.
        @discardableResult
        func dumpKilled(to image: String, sourceLocation: SourceLocation = #_sourceLocation) async throws -> ToolRun {
            let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(parent), "--tree", "--images", image, "--kill"])
            #expect(dump.status == 0, "\(dump.standardError)", sourceLocation: sourceLocation)
            scenario.stop()  // reaps the killed parent; init reaps the orphaned children
            #expect(try await TreeRestoreTests.awaitGone([parent, a, b]) == [], sourceLocation: sourceLocation)
            return dump
        }

        func awaitLine(prefix: String, containing: String, timeout: Duration = .seconds(10)) async throws -> String {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) && $0.contains(containing) }) { return String(line) }
                try await Task.sleep(for: .milliseconds(10))
            }
            throw ScenarioError.protocolError("no line '\(prefix)…\(containing)' in \(log)")
        }
    }

    static func stat(_ pid: Int32) -> ProcStat? {
        (try? Kernel.readFile("/proc/\(pid)/stat")).flatMap { ProcStat(parsing: String(decoding: $0, as: UTF8.self)) }
    }

    static func status(_ pid: Int32, _ key: String) -> String? {
        (try? Kernel.readFile("/proc/\(pid)/status")).flatMap { ProcStatus(parsing: String(decoding: $0, as: UTF8.self))[key] }
    }

    /// Waits until no process has `pid` (a killed orphan is reaped by init).
    static func awaitGone(_ pids: [Int32], timeout: Duration = .seconds(10)) async throws -> [Int32] {
        let deadline = ContinuousClock.now + timeout
        var left = pids
        while ContinuousClock.now < deadline {
            left = pids.filter { kill($0, 0) == 0 }
            if left.isEmpty { return [] }
            try await Task.sleep(for: .milliseconds(20))
        }
        return left
    }

    /// The inode of the anonymous shared mapping of `pid` (`/dev/zero (deleted)`).
    static func sharedInode(_ pid: Int32) throws -> UInt64? {
        ProcMaps.parse(String(decoding: try Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self))
            .first { $0.kind == .sharedAnonymous }?.inode
    }

    @Test("dump --tree --kill, then restore: same pids and parentage, shared log, listener, pipe and memory, every member PASS, the parent reaps its child")
    func dumpKillRestore() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        #expect(try await tree.checkBeforeDump() == tree.passedBeforeDump)

        let image = scratch.path + "/image"
        let dump = try await tree.dumpKilled(to: image)
        #expect(dump.standardOutput.hasPrefix("tree of process \(parent): 3 processes in \(image), killed"), "\(dump.standardOutput)")

        let opened = try TreeImage.open(image)
        let members = opened.manifest.members
        #expect(members.map(\.pid) == [parent, a, b] || members.map(\.pid) == [parent, b, a])
        let byPid = Dictionary(uniqueKeysWithValues: members.map { ($0.pid, $0) })
        #expect(byPid[a]?.parent == parent && byPid[b]?.parent == parent)
        #expect(members.allSatisfy { $0.session == parent })
        #expect(byPid[parent]?.processGroup == parent && byPid[a]?.processGroup == parent && byPid[b]?.processGroup == b)
        // The log is one description (kcmp); sockets and pipe ends are known by their inodes.
        #expect(Set(opened.manifest.sharedFiles.filter { $0.fd == 3 }.map(\.pid)) == [a, b])
        #expect(opened.manifest.sharedFiles.allSatisfy { $0.owner == parent && $0.ownerFd == 3 })
        #expect(Set(opened.manifest.sharedMemory.map(\.pid)) == [a, b])
        // fd 7, a pipe's write end whose read end no process holds.
        let lone = try #require(opened.members[0].manifest.descriptors?.first { $0.fd == 7 && $0.kind == .pipe }?.inode)
        #expect(opened.manifest.lonePipes == [lone])

        let check = try await ToolRun(ToolRun.mitosis, ["restore", "--check", image])
        #expect(check.status == 0, "\(check.standardOutput)\(check.standardError)")

        // The library's restorer, so that the restored parent is this test's child (reaped below).
        let restorer = try TreeRestorer(image: opened)
        let chains = Dictionary(uniqueKeysWithValues: zip(members.map(\.pid), restorer.chains))
        let result = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chains[pid]!)
            guard pages.isEmpty else { throw RestoreFailure(description: "process \(pid): \(pages.count) pages differ") }
        })
        defer {
            kill(b, SIGKILL)
            kill(a, SIGKILL)
            endRestored(parent)
        }
        #expect(result.members.map(\.pid) == members.map(\.pid))
        // Parentage, sessions and groups as they were.
        #expect(Self.stat(parent)?.ppid == getpid())
        #expect(Self.stat(a)?.ppid == parent && Self.stat(b)?.ppid == parent)
        for (pid, group) in [(parent, parent), (a, parent), (b, b)] {
            let ids = try Kernel.processGroupAndSession(pid)
            #expect(ids.session == parent && ids.group == group, "process \(pid): \(ids)")
            #expect(Self.status(pid, "TracerPid") == "0")
        }
        // One log description, one listener socket, one pipe, one shared object.
        for child in [a, b] {
            #expect(try Kernel.kcmpEqual(parent, child, .file, 3, 3), "fd 3 of \(child) is not the parent's description")
            #expect(try Kernel.kcmpEqual(parent, child, .file, 4, 4), "fd 4 of \(child) is not the parent's listener")
        }
        #expect(try Kernel.readLink("/proc/\(a)/fd/6") == Kernel.readLink("/proc/\(b)/fd/5"))
        #expect(try Kernel.readLink("/proc/\(a)/fd/6").hasPrefix("pipe:"))
        let inode = try #require(try Self.sharedInode(parent))
        #expect(try Self.sharedInode(a) == inode && Self.sharedInode(b) == inode)

        // Every member lives through its wait loop (sigtimedwait, 1 s) and logs no EXIT.
        try await Task.sleep(for: .milliseconds(1500))
        for pid in [parent, a, b] { #expect(Self.stat(pid)?.state == "S", "process \(pid): \(Self.stat(pid).map { String($0.state) } ?? "gone")") }
        #expect(!(try String(contentsOfFile: tree.log, encoding: .utf8)).contains("EXIT"))
        // B reads the ping queued before the dump; A writes one more, which B reads: the pipe
        // joins them; the shared counter counts on across all three.
        #expect(try await tree.checkAfterRestore() == tree.passedAfterRestore)
        // The restored parent reaps the restored child that exits.
        kill(b, SIGUSR2)
        #expect(try await tree.awaitLine(prefix: "REAPED ", containing: "pid=\(b) ") == "REAPED pid=\(b) status=7")
        #expect(try await Self.awaitGone([b]) == [])
    }

    @Test("a member that exits mid-dump: one line naming it, no image, every other member running, untraced")
    func memberExitsMidDump() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        let image = scratch.path + "/image"
        let error = await #expect(throws: CheckpointError.self) {
            _ = try await TreeCheckpoint.dump(root: parent, to: image, kill: true, afterMember: { pid in
                guard pid == parent else { return }
                kill(b, SIGUSR2)  // B exits (status 7); the parent reaps it
                _ = try? await TreeRestoreTests.awaitGone([b])
            })
        }
        #expect(error == CheckpointError.treeChanged(root: parent, "process \(b) exited"))
        #expect(error?.description == "the process tree of \(parent) changed during the dump (process \(b) exited); no image was written and every process was left running")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted() == ["tree.log"])
        #expect(try await tree.awaitLine(prefix: "REAPED ", containing: "pid=\(b) ") == "REAPED pid=\(b) status=7")
        for pid in [parent, a] {
            #expect(Self.status(pid, "TracerPid") == "0")
            #expect(Self.stat(pid)?.state == "S")
        }
        // A runs its own check: everything holds but the pipe, whose reader B is gone.
        #expect(try await tree.check(a, number: 1) == "CHECK role=a pid=\(a) n=1 FAIL:pipe-write-\(EPIPE) shared=1")
        #expect(try await tree.check(parent, number: 1) == "CHECK role=parent pid=\(parent) n=1 PASS shared=2")
    }

    @Test("a tree restore failing halfway kills every husk and names the step")
    func failingRestoreLeavesNothing() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        let image = scratch.path + "/image"
        _ = try await TreeCheckpoint.dump(root: parent, to: image, kill: true)
        tree.scenario.stop()
        #expect(try await Self.awaitGone([parent, a, b]) == [])
        let restorer = try TreeRestorer(image: TreeImage.open(image))
        let error = await #expect(throws: RestoreError.self) {
            _ = try await restorer.restore(verify: { pid in
                if pid == a { throw RestoreFailure(description: "refused by the test") }
            })
        }
        #expect(error?.description == "restore failed while verifying process \(a) before resuming: the check failed: refused by the test; the half-built process was killed")
        #expect(try await Self.awaitGone([parent, a, b]) == [])
        // And the image still restores.
        let result = try await restorer.restore()
        defer {
            kill(b, SIGKILL)
            kill(a, SIGKILL)
            endRestored(parent)
        }
        #expect(result.members.count == 3)
        #expect(try await tree.check(a, number: 1) == "CHECK role=a pid=\(a) n=1 PASS shared=1")
    }
}
