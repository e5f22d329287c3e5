import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// Trees restored elsewhere than where they ran: inside a new pid namespace (`--pidns`), into
/// another network-namespace "host" (`--netns`), and `kill -9` of `mitosis restore` mid-tree.
/// In the suites of the tree and nginx tests (run one at a time by scripts/test).
extension TreeRestoreTests {
    /// The last id of an `NSpid`/`NSpgid`/`NSsid` line: the id inside the process's own namespace.
    static func innerID(_ host: Int32, _ key: String) -> Int32? {
        status(host, key)?.split(separator: "\t").last.flatMap { Int32($0) }
    }

    @Test("restored inside a new pid namespace: each member its pid there, parentage, session, groups and what they share as recorded, every member PASS, the parent reaps its child, the init ends with the tree")
    func restoredInsideANewPidNamespace() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        #expect(try await tree.checkBeforeDump() == tree.passedBeforeDump)
        let image = scratch.path + "/image"
        try await tree.dumpKilled(to: image)

        let restorer = try TreeRestorer(image: TreeImage.open(image))
        let chains = Dictionary(uniqueKeysWithValues: zip(restorer.manifest.members.map(\.pid), restorer.chains))
        // `verify` gets the pids this host sees; the image's are the last of their NSpid.
        let result = try await restorer.restore(inNewPidNamespace: true, verify: { host in
            guard let pid = TreeRestoreTests.innerID(host, "NSpid"), let chain = chains[pid] else { throw RestoreFailure(description: "process \(host) is no member") }
            let pages = try RestoreVerification.differingPages(pid: host, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "process \(pid): \(pages.count) pages differ") }
        })
        let hosts = Dictionary(uniqueKeysWithValues: result.members.map { ($0.pid, $0.hostPid ?? -1) })
        let initPid = try #require(result.members.first?.namespaceInitPid)
        defer {
            for host in hosts.values where host > 0 { kill(host, SIGKILL) }
            Kernel.reap(initPid)
        }
        let (hostParent, hostA, hostB) = (hosts[parent]!, hosts[a]!, hosts[b]!)
        #expect(result.members.map(\.pid) == restorer.manifest.members.map(\.pid))
        // Inside, each has its pid; the root's parent is the init, the others' the root.
        for (pid, host) in [(parent, hostParent), (a, hostA), (b, hostB)] {
            #expect(host != pid && Self.status(host, "NSpid") == "\(host)\t\(pid)")
            #expect(Self.status(host, "TracerPid") == "0")
        }
        #expect(Self.stat(hostParent)?.ppid == initPid)
        #expect(Self.stat(hostA)?.ppid == hostParent && Self.stat(hostB)?.ppid == hostParent)
        #expect(String(decoding: try Kernel.readFile("/proc/\(initPid)/comm"), as: UTF8.self) == "mitosis-pidns\n")
        // Sessions and groups by the ids inside.
        for (host, group) in [(hostParent, parent), (hostA, parent), (hostB, b)] {
            #expect(Self.innerID(host, "NSsid") == parent && Self.innerID(host, "NSpgid") == group, "process \(host)")
        }
        // One log description, one listener, one pipe, one shared object.
        for child in [hostA, hostB] {
            #expect(try Kernel.kcmpEqual(hostParent, child, .file, 3, 3))
            #expect(try Kernel.kcmpEqual(hostParent, child, .file, 4, 4))
        }
        #expect(try Kernel.readLink("/proc/\(hostA)/fd/6") == Kernel.readLink("/proc/\(hostB)/fd/5"))
        let inode = try #require(try Self.sharedInode(hostParent))
        #expect(try Self.sharedInode(hostA) == inode && Self.sharedInode(hostB) == inode)

        // Each checks itself (its log line names its pid inside): pipe, shared counter, listener.
        #expect(try await tree.checkAfterRestore(hosts: hosts) == tree.passedAfterRestore)
        kill(hostB, SIGUSR2)
        #expect(try await tree.awaitLine(prefix: "REAPED ", containing: "pid=\(b) ") == "REAPED pid=\(b) status=7")
        // The init ends once the last member has.
        kill(hostA, SIGKILL)
        kill(hostParent, SIGKILL)
        var status: Int32 = -1
        let deadline = ContinuousClock.now + .seconds(10)
        while waitpid(initPid, &status, WNOHANG) == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(status == 0, "the init's wait status: \(status)")
        #expect(try await Self.awaitGone([hostParent, hostA, hostB]) == [])
    }

    @Test("mitosis restore --pidns --timens on of a tree: every member in the one time namespace the root was born in, its clocks continuing from the root's checkpoint, every member PASS")
    func treeInATimeNamespaceOfItsOwn() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        let image = scratch.path + "/image"
        try await tree.dumpKilled(to: image)
        let tag = "MITOSIS_TEST_RUN=\(UInt64.random(in: 1...UInt64.max))"
        let run = try await ToolRun(ToolRun.mitosis, ["restore", image, "--pidns", "--timens", "on", "--json"], prefix: ["/usr/bin/env", tag])
        #expect(run.status == 0, "\(run.standardError)")
        let result = try JSONOutput.decoder().decode(TreeRestoreResult.self, from: Data(run.standardOutput.utf8))
        let hosts = Dictionary(uniqueKeysWithValues: result.members.map { ($0.pid, $0.hostPid ?? -1) })
        defer { for host in hosts.values where host > 0 { kill(host, SIGKILL) } }
        #expect(try result.members.map(\.pid) == TreeImage.open(image).manifest.members.map(\.pid))
        let time = try #require(result.members.first?.timeNamespace)
        #expect(result.members.allSatisfy { $0.timeNamespace == time })
        // One time namespace, not this process's, with the offsets the restore reported.
        let own = try Kernel.readLink("/proc/self/ns/time")
        let namespaces = Set(try hosts.values.map { try Kernel.readLink("/proc/\($0)/ns/time") })
        #expect(namespaces.count == 1 && namespaces.first != own, "\(namespaces)")
        let offsets = try #require(TimeNamespaceOffsets(parsing: String(decoding: try Kernel.readFile("/proc/\(hosts[parent]!)/timens_offsets"), as: UTF8.self)))
        #expect(offsets.monotonic == time.monotonicOffset && offsets.boottime == time.boottimeOffset)
        // Its monotonic clock continues from the root's checkpoint (time stood still while it was down).
        let clocks = try #require(TreeImage.open(image).members.first?.manifest.restore?.clocks)
        let mine = try Kernel.childTimeNamespaceOffsets()
        let theirs = try Kernel.clockNow(ClockID.monotonic).totalNanoseconds - mine.monotonic.totalNanoseconds + offsets.monotonic.totalNanoseconds
        let sinceCheckpoint = Double(theirs - clocks.monotonic.totalNanoseconds) / 1e9
        #expect((0..<30).contains(sinceCheckpoint), "its clock reads \(sinceCheckpoint) s past the checkpoint's")
        #expect(try await tree.check(a, number: 1, hosts: hosts) == "CHECK role=a pid=\(a) n=1 PASS shared=1")
        #expect(try await tree.check(b, number: 1, hosts: hosts) == "CHECK role=b pid=\(b) n=1 PASS shared=2")
        #expect(try await tree.check(parent, number: 1, hosts: hosts) == "CHECK role=parent pid=\(parent) n=1 PASS shared=3")
        #expect(RestorePidNamespaceTests.namespaceInits(tagged: tag) == [try #require(result.members.first?.namespaceInitPid)])
        for host in hosts.values { kill(host, SIGKILL) }
        #expect(try await Self.awaitGone(Array(hosts.values)) == [])
        let deadline = ContinuousClock.now + .seconds(5)
        while !RestorePidNamespaceTests.namespaceInits(tagged: tag).isEmpty, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(RestorePidNamespaceTests.namespaceInits(tagged: tag) == [])
    }

    @Test("kill -9 of mitosis restore of a tree (same host, and --pidns) at 14 moments: never a member, husk or init left")
    func killingMitosisRestoreOfATreeLeavesNothing() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let pids = [tree.parent, tree.a, tree.b]
        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(tree.parent), "--tree", "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        tree.scenario.stop()
        #expect(try await Self.awaitGone(pids) == [])
        var completed = 0, interrupted = 0
        // Other tests restore into pid namespaces at the same time: this test's inits are told
        // from theirs by a variable in the environment they inherit from the CLI.
        let tag = "MITOSIS_TEST_RUN=\(UInt64.random(in: 1...UInt64.max))"
        for (delay, pidns) in [(0, false), (10, false), (40, false), (100, false), (200, false), (350, false), (600, false), (1000, false),
                               (20, true), (100, true), (250, true), (500, true), (800, true), (1200, true)] {
            let run = try ToolRun.start(ToolRun.mitosis, ["restore", image] + (pidns ? ["--pidns"] : []), prefix: ["/usr/bin/env", tag])
            try await Task.sleep(for: .milliseconds(delay + 30))  // the CLI takes some 30 ms to start
            run.signal(SIGKILL)
            let exit = ChildProcess.exitCode(of: try await Blocking.run { run.wait() })
            try await Task.sleep(for: .milliseconds(100))
            // A restore that finished before the kill left the tree running: ended here.
            let left = Self.members(pids, pidns: pidns)
            let untraced = !left.isEmpty && left.allSatisfy { Self.status($0, "TracerPid") == "0" }
            if exit != 128 + SIGKILL || left.count == pids.count && untraced {
                completed += 1
                for host in left { kill(host, SIGKILL) }
            } else {
                interrupted += 1
            }
            let deadline = ContinuousClock.now + .seconds(5)
            func initsLeft() -> [Int32] { RestorePidNamespaceTests.namespaceInits(tagged: tag) }
            while !(Self.members(pids, pidns: pidns).isEmpty && initsLeft().isEmpty), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(Self.members(pids, pidns: pidns) == [], "after a kill at \(delay) ms\(pidns ? " (--pidns)" : ""), members are left")
            #expect(initsLeft() == [], "after a kill at \(delay) ms an init is left")
        }
        #expect(interrupted > 0, "at least one kill landed mid-restore (\(completed) restores finished first)")
        print("kill -9 of a tree restore: \(interrupted) kills landed mid-restore, \(completed) restores finished first")
        // And the image still restores whole.
        let restored = try await ToolRun(ToolRun.mitosis, ["restore", image])
        #expect(restored.status == 0, "\(restored.standardError)")
        for pid in pids { kill(pid, SIGKILL) }
        #expect(try await Self.awaitGone(pids) == [])
    }

    @Test("an incremental tree image (dump --tree --parent): each member's image over its own in the parent tree, fewer pages stored, restored byte-exact, every member PASS")
    func incrementalTreeImage() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        #expect(try await tree.check(a, number: 1) == "CHECK role=a pid=\(a) n=1 PASS shared=1")
        let first = scratch.path + "/t1", second = scratch.path + "/t2"
        let full = try await ToolRun(ToolRun.mitosis, ["dump", String(parent), "--tree", "--images", first])
        #expect(full.status == 0, "\(full.standardError)")
        // Between the two: B and the parent count on the shared page, A queues a ping for B.
        #expect(try await tree.check(b, number: 1) == "CHECK role=b pid=\(b) n=1 PASS shared=2")
        #expect(try await tree.check(parent, number: 1) == "CHECK role=parent pid=\(parent) n=1 PASS shared=3")
        #expect(try await tree.check(a, number: 2) == "CHECK role=a pid=\(a) n=2 PASS shared=4")
        let incremental = try await ToolRun(ToolRun.mitosis, ["dump", String(parent), "--tree", "--images", second, "--parent", first, "--kill"])
        #expect(incremental.status == 0, "\(incremental.standardError)")
        #expect(incremental.standardOutput.contains("incremental checkpoint 1 of process \(parent)"), "\(incremental.standardOutput)")
        tree.scenario.stop()
        #expect(try await Self.awaitGone([parent, a, b]) == [])

        let older = try TreeImage.open(first), newer = try TreeImage.open(second)
        let restorer = try TreeRestorer(image: newer)
        for (index, member) in newer.members.enumerated() {
            let base = try #require(older.members.first { $0.manifest.pid == member.manifest.pid })
            // Each member's chain: its incremental image, then its full one in the parent tree.
            #expect(restorer.chains[index].images.map(\.manifest.id) == [member.manifest.id, base.manifest.id])
            #expect(member.manifest.parent != nil && member.storedPages < base.storedPages,
                    "process \(member.manifest.pid): \(member.storedPages) pages stored over \(base.storedPages)")
        }
        let chains = Dictionary(uniqueKeysWithValues: zip(restorer.manifest.members.map(\.pid), restorer.chains))
        let result = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chains[pid]!)
            guard pages.isEmpty else { throw RestoreFailure(description: "process \(pid): \(pages.count) pages differ") }
        })
        defer {
            kill(b, SIGKILL)
            kill(a, SIGKILL)
            endRestored(parent)
        }
        #expect(result.members.count == 3)
        #expect(try await tree.checkAfterRestore() == tree.passedAfterRestore)
    }

    @Test("a tree image missing a member's image (as a member that died mid-dump would leave it, were it written): one line, nothing restored")
    func treeImageMissingAMember() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        let image = scratch.path + "/image"
        try await tree.dumpKilled(to: image)
        try FileManager.default.removeItem(atPath: image + "/\(b)")
        for arguments in [["restore", "--check", image], ["restore", image], ["restore", "--pidns", image]] {
            let run = try await ToolRun(ToolRun.mitosis, arguments)
            #expect(run.status == 1 && run.standardOutput.isEmpty)
            #expect(run.standardError == "mitosis: \(Self.missingMemberLine(image, b))\n", "\(run.standardError)")
        }
        #expect(Self.members([parent, a, b], pidns: false) == [] && Self.members([parent, a, b], pidns: true) == [])
    }

    static func missingMemberLine(_ image: String, _ pid: Int32) -> String {
        "\(image)/\(pid): open failed: No such file or directory"
    }

    /// Live processes (not zombies) holding one of `pids`: here, or inside a nested pid namespace.
    static func members(_ pids: [Int32], pidns: Bool) -> [Int32] {
        if !pidns { return pids.filter { pid in stat(pid).map { $0.state != "Z" } ?? false } }
        return pids.flatMap { RestorePidNamespaceTests.processes(withNamespacePid: $0) }
    }
}

extension NginxRestoreTests {
    /// The veth device of a test host (its only one).
    static func veth(in host: String) async throws -> String {
        let run = try await ToolRun(NetworkHosts.ip, ["-n", host, "-o", "link", "show", "type", "veth"])
        guard let name = run.standardOutput.split(separator: ":").dropFirst().first?.trimmingCharacters(in: .whitespaces).split(separator: "@").first else {
            throw HarnessError("no veth in \(host): \(run.standardOutput)")
        }
        return String(name)
    }

    static func ip(_ arguments: [String]) async throws {
        let run = try await ToolRun(NetworkHosts.ip, arguments)
        guard run.status == 0 else { throw HarnessError("ip \(arguments.joined(separator: " ")): \(run.standardError)") }
    }

    @Test("dump --tree --kill in host A, restore inside a new pid namespace in host B, which took over the address: 1,000 requests 200 byte-identical, SIGQUIT ends it, nothing left",
          .enabled(if: FileManager.default.fileExists(atPath: nginx), "needs nginx (Debian package nginx, scripts/setup)"))
    func restoredInANewPidNamespaceOnAnotherHost() async throws {
        let hosts = try await NetworkHosts()
        do {
            try await movedToAnotherHost(hosts)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
    }

    private func movedToAnotherHost(_ hosts: NetworkHosts) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let service = hosts.addressA.split(separator: ".").dropLast().joined(separator: ".") + ".100"
        let (deviceA, deviceB) = (try await Self.veth(in: hosts.a), try await Self.veth(in: hosts.b))
        try await Self.ip(["-n", hosts.a, "addr", "add", service + "/24", "dev", deviceA])
        let server = try Server(directory: scratch.path + "/nginx", address: service)
        let launcher = try ChildProcess(executable: NetworkHosts.ip, arguments: ["netns", "exec", hosts.a, Self.nginx, "-c", server.configuration, "-p", server.directory],
                                        stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let launched = try await Blocking.run("nginx-launcher") { launcher.wait() }
        #expect(ChildProcess.exitCode(of: launched) == 0)
        let master = try server.master()
        var cleanup: Set<Int32> = [master]
        defer { for pid in cleanup { kill(pid, SIGKILL) } }
        let workers = try await Self.awaitChildren(master, count: 2)
        cleanup.formUnion(workers)
        let before = try await server.requests(20, from: hosts.b)
        #expect(before.good == 20, "\(before.firstBad ?? "")")

        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(master), "--tree", "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try await TreeRestoreTests.awaitGone([master] + workers) == [])
        cleanup = []
        // The address moves to host B before the restore: the listener binds there.
        try await Self.ip(["-n", hosts.a, "addr", "del", service + "/24", "dev", deviceA])
        try await Self.ip(["-n", hosts.b, "addr", "add", service + "/24", "dev", deviceB])

        var restorer = try TreeRestorer(image: TreeImage.open(image))
        restorer.networkNamespace = hosts.b
        let result = try await restorer.restore(inNewPidNamespace: true)
        let hostPids = result.members.compactMap(\.hostPid)
        let initPid = try #require(result.members.first?.namespaceInitPid)
        cleanup = Set(hostPids)
        defer { Kernel.reap(initPid) }
        #expect(result.members.map(\.pid) == [master] + result.members.dropFirst().map(\.pid) && Set(result.members.dropFirst().map(\.pid)) == workers)
        #expect(hostPids.count == 3)
        let hostMaster = hostPids[0]
        #expect(TreeRestoreTests.status(hostMaster, "NSpid") == "\(hostMaster)\t\(master)")
        #expect(TreeRestoreTests.stat(hostMaster)?.ppid == initPid)
        #expect(Self.children(hostMaster) == Set(hostPids.dropFirst()))
        #expect(Set(hostPids.dropFirst().compactMap { TreeRestoreTests.innerID($0, "NSpid") }) == workers)
        let netB = try await hosts.namespaceLink(hosts.b)
        for host in hostPids { #expect(try Kernel.readLink("/proc/\(host)/ns/net") == netB, "process \(host)") }
        #expect(result.members.allSatisfy { $0.networkNamespace == hosts.b })

        // Clients in host A reach it at the address it took over.
        let after = try await server.requests(1000, from: hosts.a)
        #expect(after.good == 1000, "\(after.firstBad ?? "")")

        // SIGQUIT: graceful shutdown, workers first; the init ends with the master.
        kill(hostMaster, SIGQUIT)
        var status: Int32 = -1
        let deadline = ContinuousClock.now + .seconds(10)
        while waitpid(initPid, &status, WNOHANG) == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(status == 0, "the init's wait status: \(status)")
        #expect(try await TreeRestoreTests.awaitGone(hostPids) == [])
        #expect(!FileManager.default.fileExists(atPath: server.pidFile))
        let log = try String(contentsOfFile: server.errorLog, encoding: .utf8)
        #expect(log.contains("\(master)#\(master): exit"), "\(log)")
        #expect(!log.contains("[alert]") && !log.contains("[emerg]") && !log.contains("[crit]"), "\(log)")
        // No lock table in either host (nginx held no established connection at the dump).
        for host in [hosts.a, hosts.b] {
            let tables = try await ToolRun("/usr/sbin/nft", ["list", "tables"], prefix: hosts.prefix(host))
            #expect(tables.standardOutput.isEmpty, "\(host): \(tables.standardOutput)")
        }
    }
}

extension NginxRestoreTests {
    /// A client of the test holding one HTTP/1.1 keep-alive connection to nginx.
    final class KeepAliveClient: @unchecked Sendable {
        let fd: Int32
        let localPort: UInt16

        init(port: UInt16) throws {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let connected = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
            }
            guard connected else { close(fd); throw HarnessError("connect: \(errno)") }
            self.fd = fd
            localPort = UInt16(bigEndian: address.sin_port)
        }

        deinit { close(fd) }

        /// One `GET` on the connection: its status and body (by Content-Length), or the error.
        func get() async throws -> (status: Int, body: [UInt8], error: String?) {
            let fd = self.fd
            return try await Blocking.run("nginx-keepalive") {
                let request = Array("GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
                guard write(fd, request, request.count) == request.count else { return (0, [], "write: \(errno)") }
                var response: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 65_536)
                let separator = Array("\r\n\r\n".utf8)
                var headerEnd: Int?
                var length = Int.max
                while headerEnd.map({ response.count - $0 - 4 < length }) ?? true {
                    let n = read(fd, &chunk, chunk.count)
                    if n <= 0 { return (0, response, n == 0 ? "end of stream" : "read: \(errno)") }
                    response += chunk[0..<n]
                    if headerEnd == nil, let end = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<$0 + 4]) == separator }) {
                        headerEnd = end
                        let head = String(decoding: response[..<end], as: UTF8.self).lowercased()
                        length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                            .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
                    }
                }
                let head = String(decoding: response[..<headerEnd!], as: UTF8.self)
                return (Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0, Array(response[(headerEnd! + 4)...]), nil)
            }
        }
    }

    /// The nftables tables of this network namespace.
    static func tables() async throws -> [String] {
        let run = try await ToolRun("/usr/sbin/nft", ["list", "tables"])
        return run.standardOutput.split(separator: "\n").map(String.init)
    }

    @Test("kill -9 of mitosis restore of nginx holding a live keep-alive connection, at 6 moments: no member, husk or lock of its own left; then the restore, and the client's next request on its same connection is answered",
          .enabled(if: FileManager.default.fileExists(atPath: nginx), "needs nginx (Debian package nginx, scripts/setup)"))
    func killingTheRestoreOfATreeWithALiveConnection() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tablesBefore = Set(try await Self.tables())
        let server = try Server(directory: scratch.path + "/nginx")
        let launcher = try ChildProcess(executable: Self.nginx, arguments: ["-c", server.configuration, "-p", server.directory],
                                        stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let launched = try await Blocking.run("nginx-launcher") { launcher.wait() }
        #expect(ChildProcess.exitCode(of: launched) == 0)
        let master = try server.master()
        var cleanup: Set<Int32> = [master]
        defer { for pid in cleanup { kill(pid, SIGKILL) } }
        let workers = try await Self.awaitChildren(master, count: 2)
        cleanup.formUnion(workers)
        let client = try KeepAliveClient(port: server.port)
        let first = try await client.get()
        #expect(first.status == 200 && first.body == server.body, "\(first.error ?? "")")

        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(master), "--tree", "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try await TreeRestoreTests.awaitGone([master] + workers) == [])
        // The worker that held the connection left it locked for the restore.
        let held = try await Self.tables().filter { table in workers.contains { table.contains("mitosis-hold-\($0)-") } }
        #expect(held.count == 1, "\(held)")

        var interrupted = 0
        for delay in [0, 150, 400, 700, 1100, 1600] {
            let run = try ToolRun.start(ToolRun.mitosis, ["restore", image])
            try await Task.sleep(for: .milliseconds(delay + 30))
            run.signal(SIGKILL)
            let (status, errors) = try await Blocking.run { let errors = run.readToEnd().errorOutput; return (run.wait(), errors) }
            let exit = ChildProcess.exitCode(of: status)
            try await Task.sleep(for: .milliseconds(100))
            let members = [master] + Array(workers)
            // Finished: every member alive (a killed husk shows TracerPid 0 as a zombie too) and untraced.
            let running = members.allSatisfy { TreeRestoreTests.stat($0).map { $0.state != "Z" } == true && TreeRestoreTests.status($0, "TracerPid") == "0" }
            if exit != 128 + SIGKILL || running {
                print("kill -9 at \(delay) ms: the restore had finished first (exit \(exit)) \(String(decoding: errors, as: UTF8.self))")
                break
            }
            interrupted += 1
            #expect(try await TreeRestoreTests.awaitGone(members, timeout: .seconds(5)) == [], "after a kill at \(delay) ms")
            let own = try await Self.tables().filter { $0.contains("mitosis-lock-\(run.pid)-") }
            #expect(own == [], "after a kill at \(delay) ms: \(own)")
        }
        #expect(interrupted > 0)
        print("kill -9 of a restore of nginx with a live connection: \(interrupted) kills landed mid-restore")
        // A restore to the end (unless the last one finished): the connection is rebuilt and answers.
        if TreeRestoreTests.members([master] + Array(workers), pidns: false).count != 3 {
            #expect(try await TreeRestoreTests.awaitGone([master] + Array(workers)) == [])
            let restore = try await ToolRun(ToolRun.mitosis, ["restore", image])
            #expect(restore.status == 0, "\(restore.standardError)")
        }
        cleanup.formUnion(Self.children(master))
        let second = try await client.get()
        #expect(second.status == 200 && second.body == server.body, "\(second.error ?? "")")
        // (Other processes' tables on this host, there before, are not this test's.)
        #expect(Set(try await Self.tables()).subtracting(tablesBefore).filter { $0.contains("mitosis-") } == [])
        kill(master, SIGQUIT)
        #expect(try await TreeRestoreTests.awaitGone(Array(cleanup)) == [])
    }
}
