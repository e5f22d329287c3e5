import Foundation
import Glibc
import Logging
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisReplication

/// `protect --tree`: the `proctree` scenario (a session leader, two children sharing its log,
/// listener and shared memory, a pipe from A to B) in host A, protected as one tree onto a
/// standby in host B, killed with SIGKILL, promoted in B.
@Suite(.serialized) struct TreeReplicationTests {
    typealias Tree = TreeRestoreTests.Tree
    static let port = 7400

    func withHosts(_ body: (NetworkHosts) async throws -> Void) async throws {
        let hosts = try await NetworkHosts()
        do {
            try await body(hosts)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
        #expect(!NetworkHosts.exists(hosts.a) && !NetworkHosts.exists(hosts.b))
    }

    func protect(_ pid: Int32, _ hosts: NetworkHosts, _ scratch: ScratchDirectory, data: [String] = []) throws -> ServiceProcess {
        try ServiceProcess(["protect", "\(pid)", "--tree", "--standby", "\(hosts.addressB):\(Self.port)", "--interval", "50"] + data.flatMap { ["--data", $0] },
                           in: hosts.prefix(hosts.a), log: scratch.path + "/protect.log")
    }

    func standby(_ hosts: NetworkHosts, _ scratch: ScratchDirectory, images: String) throws -> ServiceProcess {
        try ServiceProcess(["standby", "--listen", "\(hosts.addressB):\(Self.port)", "--images", images],
                           in: hosts.prefix(hosts.b), log: scratch.path + "/standby.log")
    }

    /// Hosts A and B, a scratch directory (the standby's images in `standby` there), and the
    /// tree started in host A with each member checked once.
    func withCheckedTree(_ body: (NetworkHosts, ScratchDirectory, String, Tree) async throws -> Void) async throws {
        try await withHosts { hosts in
            let scratch = try ScratchDirectory()
            defer { scratch.remove() }
            let tree = try await Tree(scratch: scratch, prefix: hosts.prefix(hosts.a))
            defer { tree.scenario.stop() }
            #expect(try await tree.checkBeforeDump() == tree.passedBeforeDump)
            try await body(hosts, scratch, scratch.path + "/standby", tree)
        }
    }

    /// The primary host fails: protect and every member killed with SIGKILL. Returns the
    /// standby's newest committed epoch once it has seen the connection end (final then).
    static func failPrimary(_ tree: Tree, protect: ServiceProcess, standby: ServiceProcess, images: String) async throws -> Epoch {
        let ended = standby.connectionsEnded
        await protect.stop(SIGKILL)
        for pid in [tree.parent, tree.a, tree.b] { kill(pid, SIGKILL) }
        tree.scenario.stop()
        #expect(try await TreeRestoreTests.awaitGone([tree.parent, tree.a, tree.b]) == [])
        await standby.awaitConnectionEnded(since: ended)
        return try #require(newestTree(images)).epoch
    }

    /// The newest committed tree epoch of a standby directory.
    static func newestTree(_ images: String) -> (epoch: Epoch, tree: TreeImage)? {
        let scan = StandbyDirectory(images).scan()
        guard let newest = scan.newest, let tree = scan.tree else { return nil }
        return (newest.epoch, tree)
    }

    /// The nftables tables of a host (none of Mitosis's may be left).
    static func tables(_ hosts: NetworkHosts, _ host: String) async throws -> String {
        try await ToolRun("/usr/sbin/nft", ["list", "tables"], prefix: hosts.prefix(host)).standardOutput
    }

    @Test("protect --tree --data: every epoch the whole tree, incremental per member, with its data files; killed, its files lost, promoted in B: the files as at the epoch, same pids and parentage, every member PASS")
    func aProtectedTreeIsPromotedWhole() async throws {
        try await withCheckedTree { hosts, scratch, images, tree in
            let (parent, a, b) = (tree.parent, tree.a, tree.b)
            // A data directory: one file grows, one is added (two 64 KiB blocks and a part), one removed.
            let data = scratch.path + "/data"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            try Data("one\n".utf8).write(to: URL(fileURLWithPath: data + "/state.txt"))
            try Data("gone\n".utf8).write(to: URL(fileURLWithPath: data + "/gone.txt"))
            let added = Data((0..<150_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) })
            let standby = try standby(hosts, scratch, images: images)
            defer { standby.child.kill() }
            try await standby.awaitLog("listening on")
            let protect = try protect(parent, hosts, scratch, data: [data])
            defer { protect.child.kill() }
            let changedAt = try await StandbyImages.awaitEpoch(images, atLeast: 3)
            let state = try FileHandle(forWritingTo: URL(fileURLWithPath: data + "/state.txt"))
            try state.seekToEnd()
            try state.write(contentsOf: Data("two\n".utf8))
            try state.close()
            try added.write(to: URL(fileURLWithPath: data + "/added.bin"))
            try FileManager.default.removeItem(atPath: data + "/gone.txt")
            // Two epochs later, an epoch frozen after the changes is committed.
            _ = try await StandbyImages.awaitEpoch(images, atLeast: max(6, changedAt.rawValue + 2))
            #expect(protect.text.contains("protect: tree of \(parent): 3 process(es) \(parent), "), "\(protect.text.suffix(2000))")
            #expect(protect.text.contains("sending a full base"))
            // The tree's restore check (pipes between members, the lone pipe, shared memory) passes.
            try await standby.awaitLog("committed (term 1)  ready")
            // Each epoch is one tree image; after the first, every member's image is incremental
            // over the same member's image in the epoch before, and stores a few pages at most.
            let held = try #require(Self.newestTree(images))
            #expect(held.tree.manifest.members.map(\.pid).sorted() == [parent, a, b].sorted())
            #expect(held.tree.members.allSatisfy { $0.manifest.kind == .incremental && $0.manifest.sequence == Int(held.epoch.rawValue) - 1 },
                    "\(held.tree.members.map { ($0.manifest.pid, $0.manifest.kind, $0.manifest.sequence) })")
            let base = try TreeImage.open(images + "/epochs/" + Epoch(1).directoryName)
            #expect(base.members.allSatisfy { $0.manifest.kind == .full })
            for member in held.tree.members {
                let full = base.members.first { $0.manifest.pid == member.manifest.pid }!
                #expect(member.manifest.stats.pagesWritten < full.manifest.stats.pagesWritten,
                        "process \(member.manifest.pid): \(member.manifest.stats.pagesWritten) pages, the base \(full.manifest.stats.pagesWritten)")
                #expect(try member.chain().images.count == Int(held.epoch.rawValue))
            }
            // The primary host fails: protect and the whole tree killed.
            let committed = try await Self.failPrimary(tree, protect: protect, standby: standby, images: images)
            // Host A's files are lost: the data directory emptied, the members' shared log (open
            // for writing: shipped with every tree epoch) cut to nothing.
            let log = try Data(contentsOf: URL(fileURLWithPath: tree.log))
            for name in try FileManager.default.contentsOfDirectory(atPath: data) { try FileManager.default.removeItem(atPath: data + "/" + name) }
            try Data().write(to: URL(fileURLWithPath: tree.log))
            let promote = try await ToolRun(ToolRun.mitosis, ["promote", images], prefix: hosts.prefix(hosts.b))
            defer { for pid in [b, a, parent] { kill(pid, SIGKILL) } }
            #expect(promote.status == 0, "\(promote.standardError)")
            #expect(promote.standardOutput.hasPrefix("promoted epoch \(committed.rawValue) "), "\(promote.standardOutput)")
            #expect(promote.standardOutput.contains(" as tree of 3 process(es) \(parent), ") && promote.standardOutput.contains(" root process \(parent) cold (the standby keeps no warm clone (--warm))"),
                    "\(promote.standardOutput)")
            #expect(promote.standardOutput.contains(", 3 data file(s) in "), "\(promote.standardOutput)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: data + "/state.txt")) == Data("one\ntwo\n".utf8))
            #expect(try Data(contentsOf: URL(fileURLWithPath: data + "/added.bin")) == added)
            #expect(!FileManager.default.fileExists(atPath: data + "/gone.txt"))
            #expect(try Data(contentsOf: URL(fileURLWithPath: tree.log)) == log)
            #expect(await standby.stop(SIGTERM, timeout: .seconds(5)) == 0)
            #expect(FileManager.default.fileExists(atPath: images + "/PROMOTED"))
            // Same pids, parentage, sessions and groups, in host B, untraced.
            let hostB = try await hosts.namespaceLink(hosts.b)
            #expect(TreeRestoreTests.stat(a)?.ppid == parent && TreeRestoreTests.stat(b)?.ppid == parent)
            for (pid, group) in [(parent, parent), (a, parent), (b, b)] {
                let ids = try Kernel.processGroupAndSession(pid)
                #expect(ids.session == parent && ids.group == group, "process \(pid): \(ids)")
                #expect(TreeRestoreTests.status(pid, "TracerPid") == "0")
                #expect(try Kernel.readLink("/proc/\(pid)/ns/net") == hostB)
            }
            // B reads A's ping queued before the last epoch; the shared counter counts on.
            #expect(try await tree.checkAfterRestore() == tree.passedAfterRestore)
            for pid in [b, a, parent] { kill(pid, SIGKILL) }
            #expect(try await TreeRestoreTests.awaitGone([parent, a, b]) == [])
            #expect(!(try await Self.tables(hosts, hosts.a)).contains("mitosis"))
            #expect(!(try await Self.tables(hosts, hosts.b)).contains("mitosis"))
        }
    }

    @Test("a warm standby of a tree keeps every member's husk, in a new pid namespace, up to date, its chain compacted; killed, promoted from the warm clone: same pids inside, parentage, every member PASS")
    func aWarmTreeIsPromotedFromItsHusks() async throws {
        try await withCheckedTree { hosts, scratch, images, tree in
            let (parent, a, b) = (tree.parent, tree.a, tree.b)
            // The tree's pids are taken here (one kernel for both hosts): the husks get them in a
            // pid namespace of their own.
            let standby = try ServiceProcess(["standby", "--listen", "\(hosts.addressB):\(Self.port)", "--images", images, "--warm", "--pidns",
                                              "--compact-every", "4"],
                                             in: hosts.prefix(hosts.b), log: scratch.path + "/standby.log")
            defer { standby.child.kill() }
            try await standby.awaitLog("listening on")
            let protect = try protect(parent, hosts, scratch)
            defer { protect.child.kill() }
            _ = try await StandbyImages.awaitEpoch(images, atLeast: 4)
            // Tree epochs are compacted too: the root's chain folded into a full tree epoch of the
            // same members and image ids, which later tree epochs build on.
            try await standby.awaitLog("standby: compacted the chain into a full base at epoch ", timeout: .seconds(60))
            let compacted = try #require(Self.newestTree(images))
            let lengths = try compacted.tree.members.map { try $0.chain().images.count }
            #expect(lengths.allSatisfy { $0 < Int(compacted.epoch.rawValue) }, "epoch \(compacted.epoch): chains of \(lengths) images")
            let warm = try await ReplicationTests.awaitWarm(images, atLeast: compacted.epoch.rawValue + 1)
            #expect(standby.text.contains("warm clone: husk of tree of 3 process(es), root process \(parent) (pid "), "\(standby.text.suffix(2000))")
            #expect(warm.builds == 1 && warm.updates >= 2, "\(warm)")
            // Three husks below the root's, each with its member's pid inside, traced by the
            // standby and stopped.
            let huskRoot = try #require(warm.hostPid)
            let husks = Kernel.processTree(root: huskRoot)
            #expect(husks.count == 3 && husks.allSatisfy { $0 != parent && $0 != a && $0 != b }, "\(husks)")
            #expect(Set(husks.compactMap { TreeRestoreTests.innerID($0, "NSpid") }) == [parent, a, b])
            for husk in husks {
                let held = try #require(ReplicationTests.stateAndTracer(husk))
                #expect(held.state == "t" && ReplicationTests.threadIDs(standby.pid).contains(held.tracer), "\(held)")
            }
            // The primary host fails.
            let committed = try await Self.failPrimary(tree, protect: protect, standby: standby, images: images)
            let promote = try await ToolRun(ToolRun.mitosis, ["promote", images], prefix: hosts.prefix(hosts.b))
            defer { for husk in husks { kill(husk, SIGKILL) } }
            #expect(promote.status == 0, "\(promote.standardError)")
            #expect(promote.standardOutput.hasPrefix("promoted epoch \(committed.rawValue) "), "\(promote.standardOutput)")
            #expect(promote.standardOutput.contains(" root process \(parent) (pid \(huskRoot) here, in a new pid namespace) from the warm clone in "),
                    "\(promote.standardOutput)")
            // The husks are the tree now: untraced, running, parentage as recorded.
            let hostPids = Dictionary(uniqueKeysWithValues: husks.compactMap { host in TreeRestoreTests.innerID(host, "NSpid").map { ($0, host) } })
            for host in husks { #expect(TreeRestoreTests.status(host, "TracerPid") == "0") }
            #expect(TreeRestoreTests.stat(hostPids[a]!)?.ppid == huskRoot && TreeRestoreTests.stat(hostPids[b]!)?.ppid == huskRoot)
            #expect(try await tree.checkAfterRestore(hosts: hostPids) == tree.passedAfterRestore)
            #expect(await standby.stop(SIGTERM, timeout: .seconds(5)) == 0)
            for husk in husks { kill(husk, SIGKILL) }
            #expect(try await TreeRestoreTests.awaitGone(husks) == [])
            #expect(!(try await Self.tables(hosts, hosts.b)).contains("mitosis"))
        }
    }

    @Test("a member exiting mid-protect: one line naming it, a full tree epoch of the members left, every member running untraced")
    func aMemberExitingMidProtectGivesAFullTreeEpoch() async throws {
        try await withHosts { hosts in
            let scratch = try ScratchDirectory()
            defer { scratch.remove() }
            let images = scratch.path + "/standby"
            let tree = try await Tree(scratch: scratch, prefix: hosts.prefix(hosts.a))
            defer { tree.scenario.stop() }
            let (parent, a, b) = (tree.parent, tree.a, tree.b)
            let standby = try standby(hosts, scratch, images: images)
            defer { standby.child.kill() }
            try await standby.awaitLog("listening on")
            let protect = try protect(parent, hosts, scratch)
            defer { protect.child.kill() }
            let before = try await StandbyImages.awaitEpoch(images, atLeast: 3).rawValue
            kill(b, SIGUSR2)  // B exits (status 7); the parent reaps it
            #expect(try await tree.awaitLine(prefix: "REAPED ", containing: "pid=\(b) ") == "REAPED pid=\(b) status=7")
            try await protect.awaitLog("protect: tree of \(parent): 2 process(es) \(parent), \(a)")
            #expect(protect.text.contains("protect: the tree of \(parent) changed (process \(b) exited)")
                    || protect.text.contains("protect: the tree of \(parent) changed (process(es) \(b) exited)"), "\(protect.text.suffix(2000))")
            #expect(!protect.text.contains("failed"), "\(protect.text.suffix(2000))")
            // The next committed epoch is a full tree epoch of the two members left, and later
            // ones build on it.
            let deadline = ContinuousClock.now + .seconds(30)
            var held = Self.newestTree(images)
            while ContinuousClock.now < deadline, (held?.tree.manifest.members.count ?? 3) != 2 || (held?.tree.members.first?.manifest.sequence ?? 0) < 2 {
                try await Task.sleep(for: .milliseconds(50))
                held = Self.newestTree(images)
            }
            let newest = try #require(held)
            #expect(newest.epoch.rawValue > before)
            #expect(newest.tree.manifest.members.map(\.pid) == [parent, a])
            let sequence = newest.tree.members[0].manifest.sequence
            #expect(sequence >= 2)
            let full = try TreeImage.open(images + "/epochs/" + Epoch(newest.epoch.rawValue - UInt64(sequence)).directoryName)
            #expect(full.manifest.members.map(\.pid) == [parent, a] && full.members.allSatisfy { $0.manifest.kind == .full })
            #expect(!standby.text.contains("refused"), "\(standby.text.suffix(2000))")
            // Stopped, protect leaves both running, untraced; the parent passes its check (A's
            // pipe lost its reader with B: its check says so, as without Mitosis).
            #expect(await protect.stop(SIGTERM) == 0, "\(protect.text.suffix(1000))")
            for pid in [parent, a] {
                #expect(TreeRestoreTests.status(pid, "TracerPid") == "0")
                #expect(TreeRestoreTests.stat(pid)?.state == "S")
            }
            #expect(try await tree.check(parent, number: 1) == "CHECK role=parent pid=\(parent) n=1 PASS shared=1")
            #expect(try await tree.check(a, number: 1) == "CHECK role=a pid=\(a) n=1 FAIL:pipe-write-\(EPIPE) shared=2")
            await standby.stop(SIGTERM)
        }
    }

    @Test("a standby holding a tree epoch refuses tree epochs of other members or parents, and member images over other images; hostile tree frames are dropped")
    func theStandbyRefusesATreeEpochOfAnotherTree() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let tree = try await Tree(scratch: scratch)
        defer { tree.scenario.stop() }
        let (parent, a, b) = (tree.parent, tree.a, tree.b)
        // A real tree image as the committed epoch 1 of a standby directory.
        let directory = StandbyDirectory(scratch.path + "/standby")
        let dumped = try await TreeCheckpoint.dump(root: parent, to: directory.imagePath(Epoch(1)))
        let store = try await Blocking.run { try StandbyStore(directory: directory, compactEvery: 0, logger: Logger(label: "test")) }
        #expect(await store.committed == CommittedEpoch(epoch: Epoch(1), imageID: dumped.manifest.id))
        #expect(await store.committedTree?.manifest.members.count == 3)
        func json<T: Encodable>(_ value: T) -> [UInt8] { Array(try! JSONOutput.encoder(pretty: false).encode(value)) }
        func connect(tree: Bool) async throws -> Int {
            let token = await store.connect()
            let hello = Hello(pid: parent, node: "test", pageSize: CheckpointHeader.systemPageSize, formatVersion: CheckpointManifest.currentFormatVersion,
                              deltaBase: nil, tree: tree)
            guard case .send(let state) = await store.receive(ReplicationFrame(.hello, term: Term(1), payload: json(hello)), connection: token),
                  state.type == .state else { throw HarnessError("no state") }
            return token
        }
        func refusal(_ reply: StoreReply) -> Refusal? {
            guard case .refuse(let frame, _) = reply else { return nil }
            return try? MessageCoding.decode(Refusal.self, frame.payload)
        }
        func dropped(_ reply: StoreReply) -> String? {
            guard case .drop(let why) = reply else { return nil }
            return why
        }
        let members = dumped.manifest.members.map { TreeEpochMembers.Member(pid: $0.pid, parent: $0.parent) }
        func begin(_ members: [TreeEpochMembers.Member], epoch: UInt64 = 2, parent over: UInt64 = 1) -> ReplicationFrame {
            ReplicationFrame(.treeBegin, term: Term(1), epoch: Epoch(epoch), parent: Epoch(over), payload: json(TreeEpochMembers(root: parent, members: members)))
        }

        // B gone: another member set.
        var token = try await connect(tree: true)
        var reply = await store.receive(begin(members.filter { $0.pid != b }), connection: token)
        #expect(refusal(reply)?.code == .parentMismatch)
        #expect(refusal(reply)?.reason.contains("the tree changed, a full tree epoch is needed") == true, "\(String(describing: refusal(reply)))")
        // B now A's child: other parents.
        token = try await connect(tree: true)
        reply = await store.receive(begin(members.map { $0.pid == b ? .init(pid: b, parent: a) : $0 }), connection: token)
        #expect(refusal(reply)?.code == .parentMismatch)
        // The same tree: accepted; a member image over an image the standby does not hold: refused.
        token = try await connect(tree: true)
        #expect(await store.receive(begin(members), connection: token) == StoreReply.none)
        let header = CheckpointHeader(kind: .incremental, parent: ParentLink(path: "../x", id: "not-this-one"), sequence: 1, pid: a)
        reply = await store.receive(ReplicationFrame(.imageBegin, term: Term(1), epoch: Epoch(2), parent: Epoch(1), payload: json(header)), connection: token)
        #expect(refusal(reply)?.code == .parentMismatch)
        // A member that is not one: dropped.
        token = try await connect(tree: true)
        #expect(await store.receive(begin(members), connection: token) == StoreReply.none)
        let stranger = CheckpointHeader(kind: .incremental, parent: ParentLink(path: "../x", id: "x"), sequence: 1, pid: 999_999)
        reply = await store.receive(ReplicationFrame(.imageBegin, term: Term(1), epoch: Epoch(2), parent: Epoch(1), payload: json(stranger)), connection: token)
        #expect(dropped(reply)?.contains("not a member still expected") == true)
        // A data-file change of another epoch, and one inside a member's image: dropped.
        func fileDelta(epoch: UInt64, parent over: UInt64 = 1) -> ReplicationFrame {
            ReplicationFrame(.fileDelta, term: Term(1), epoch: Epoch(epoch), parent: Epoch(over),
                             payload: json(FileDelta(path: "/tmp/x", kind: .whole, offset: 0, size: 1, mode: 0o600)) + [0, 65])
        }
        token = try await connect(tree: true)
        #expect(await store.receive(begin(members), connection: token) == StoreReply.none)
        #expect(dropped(await store.receive(fileDelta(epoch: 3), connection: token))?.contains("a data-file change inside a member's image or of another epoch") == true)
        token = try await connect(tree: true)
        #expect(await store.receive(begin(members, parent: 0), connection: token) == StoreReply.none)
        let full = CheckpointHeader(kind: .full, sequence: 0, pid: parent)
        #expect(await store.receive(ReplicationFrame(.imageBegin, term: Term(1), epoch: Epoch(2), parent: .none, payload: json(full)), connection: token) == StoreReply.none)
        #expect(dropped(await store.receive(fileDelta(epoch: 2, parent: 0), connection: token))?.contains("a data-file change inside a member's image or of another epoch") == true)
        // A tree manifest naming images that never came: dropped.
        token = try await connect(tree: true)
        #expect(await store.receive(begin(members), connection: token) == StoreReply.none)
        reply = await store.receive(ReplicationFrame(.treeFinish, term: Term(1), epoch: Epoch(2), parent: Epoch(1), payload: json(dumped.manifest)), connection: token)
        #expect(dropped(reply)?.contains("was not received") == true, "\(reply)")
        // Tree frames from a primary protecting one process, and a lone image from one protecting a tree.
        token = try await connect(tree: false)
        #expect(dropped(await store.receive(begin(members), connection: token))?.contains("protects one process") == true)
        token = try await connect(tree: true)
        let lone = CheckpointHeader(kind: .full, sequence: 0, pid: parent)
        #expect(dropped(await store.receive(ReplicationFrame(.imageBegin, term: Term(1), epoch: Epoch(2), payload: json(lone)), connection: token))?
            .contains("outside a tree epoch") == true)
        // A tree frame that says protocol version 1.
        var old = begin(members).bytes
        old[4] = 1
        #expect(throws: ProtocolViolation("a treeBegin frame in protocol version 1")) {
            try ReplicationFrameDecoder.decode(old, accepting: Set(FrameType.allCases))
        }
        // Nothing was committed, nothing left behind.
        await store.close()
        #expect(await store.committed?.epoch == Epoch(1))
        #expect(StandbyImages.hiddenEntries(directory.path).isEmpty)
        #expect(try Kernel.listDirectory(directory.epochsPath) == [Epoch(1).directoryName])
    }
}
