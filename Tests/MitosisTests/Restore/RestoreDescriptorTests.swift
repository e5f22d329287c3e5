import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore
@testable import MitosisTrace

/// The `restorefds` scenario holding the descriptor kinds `kinds`, checked once, checkpointed,
/// killed and restored; the restored process then checks itself again.
struct RestoredDescriptorScenario {
    let scratch: ScratchDirectory
    let log: String
    let pid: Int32
    let manifest: CheckpointManifest

    /// `beforeRestore` runs with the original dead and the image written (given the log's path).
    init(kinds: String, beforeRestore: ((String) throws -> Void)? = nil) async throws {
        let scratch = try ScratchDirectory()
        do {
            try await self.init(kinds: kinds, scratch: scratch, beforeRestore: beforeRestore)
        } catch {
            scratch.remove()
            throw error
        }
    }

    private init(kinds: String, scratch: ScratchDirectory, beforeRestore: ((String) throws -> Void)?) async throws {
        self.scratch = scratch
        log = scratch.path + "/fds.log"
        let child = try await ScenarioProcess("restorefds", [log, "120", kinds])
        defer { child.stop() }
        pid = child.pid
        try await child.send("detach")
        kill(pid, SIGUSR1)
        let first = try await CheckpointedScenario.awaitCheck(1, in: log)
        guard first == "CHECK n=1 PASS" else { throw RestoreFailure(description: "before the checkpoint: \(first)") }
        let session = try await CheckpointSession(pid: pid)
        let result: CheckpointResult
        do { result = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/image")) } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        manifest = result.manifest
        child.stop()
        guard kill(pid, 0) == -1 && errno == ESRCH else { throw RestoreFailure(description: "the original still runs") }

        try beforeRestore?(log)
        let restorer = try Restorer(image: CheckpointImage.open(scratch.path + "/image"))
        let refusals = restorer.refusals()
        guard refusals.isEmpty else { throw RestoreFailure(description: "refused: \(refusals)") }
        let chain = restorer.chain, manifest = restorer.manifest
        _ = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ") }
            let maps = try RestoreVerification.mappingDifferences(pid: pid, manifest: manifest)
            guard maps.isEmpty else { throw RestoreFailure(description: maps.joined(separator: "; ")) }
        })
    }

    /// Asks the restored process to check itself and returns its CHECK line.
    func check(_ number: Int) async throws -> String {
        kill(pid, SIGUSR1)
        return try await CheckpointedScenario.awaitCheck(number, in: log)
    }

    func fdinfo(_ fd: Int32) throws -> String { String(decoding: try Kernel.readFile("/proc/\(pid)/fdinfo/\(fd)"), as: UTF8.self) }
    func link(_ fd: Int32) throws -> String { try Kernel.readLink("/proc/\(pid)/fd/\(fd)") }

    /// The restored process's descriptors against the manifest's: same numbers, kinds, flags, offsets.
    func descriptorDifferences() throws -> [String] {
        let live = try ProcessReader.descriptors(TargetProcess(pid: pid))
        var differences: [String] = []
        for recorded in manifest.descriptors ?? [] {
            guard let now = live.first(where: { $0.fd == recorded.fd }) else { differences.append("fd \(recorded.fd) missing"); continue }
            if now.kind != recorded.kind { differences.append("fd \(recorded.fd) is \(now.kind), was \(recorded.kind)") }
            if now.flags != recorded.flags { differences.append("fd \(recorded.fd) flags 0\(String(now.flags, radix: 8)), were 0\(String(recorded.flags, radix: 8))") }
            if now.position != recorded.position { differences.append("fd \(recorded.fd) at \(now.position), was at \(recorded.position)") }
        }
        if live.count != (manifest.descriptors ?? []).count { differences.append("\(live.count) descriptors, were \((manifest.descriptors ?? []).count)") }
        return differences
    }

    func remove() {
        endRestored(pid)
        scratch.remove()
    }
}

@Suite(.serialized) struct RestoreDescriptorTests {
    @Test func tcpAndUdpSocketsComeBackBoundListeningAndConnected() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "inet")
        defer { scenario.remove() }
        // Before the process writes to its log again (fd 3's offset moves).
        let differences = try scenario.descriptorDifferences()
        #expect(differences == [], "\(differences)")
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
        for fd: Int32 in 10...15 { #expect(try scenario.link(fd).hasPrefix("socket:["), "fd \(fd)") }
        // Flags as fdinfo shows them: 04002 = O_RDWR|O_NONBLOCK, 02000002 = O_RDWR|O_CLOEXEC.
        #expect(try scenario.fdinfo(10).contains("flags:\t04002\n"))
        #expect(try scenario.fdinfo(11).contains("flags:\t02000002\n"))
        // Seen from outside (sock_diag): the listeners' addresses and backlogs (Send-Q), the UDP bindings.
        let table = try SockDiag(networkNamespaceOf: scenario.pid).table()
        let states = scenario.manifest.restore?.sockets ?? []
        func live(_ fd: Int32) throws -> InetSocket? {
            let inode = try scenario.link(fd).dropFirst(8).dropLast()
            return table.inet.first { String($0.inode) == inode }
        }
        let v4 = try live(10), v6 = try live(11)
        #expect(v4?.state == "LISTEN" && v4?.local.address == "127.0.0.1" && v4?.sendQueue == 7, "\(String(describing: v4))")
        #expect(v6?.state == "LISTEN" && v6?.local.address == "::1" && v6?.sendQueue == 3 && v6?.v6Only == true, "\(String(describing: v6))")
        let recordedV4 = states.first { $0.domain == 2 && $0.listening }
        #expect(recordedV4?.local?.port == v4?.local.port && recordedV4?.backlog == 7)
        let udp = try live(13)
        let receiver = try live(14)
        #expect(udp?.protocol == .udp && udp?.state == "ESTABLISHED" && udp?.remote.port == receiver?.local.port)
        // The image records what restore used: options and states, and no TCP connection.
        let options = recordedV4?.options.filter { $0.value != 0 }.map(\.label) ?? []
        #expect(Set(["SO_REUSEADDR", "SO_KEEPALIVE", "TCP_NODELAY"]).isSubset(of: Set(options)), "\(options)")
        #expect(try await scenario.check(3) == "CHECK n=3 PASS")
    }

    @Test func unixSocketpairsListenersAndUnnamedSocketsComeBackWithTheirQueues() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "unix")
        defer { scenario.remove() }
        let differences = try scenario.descriptorDifferences()
        #expect(differences == [], "\(differences)")
        // The pairs are pairs again: each end's peer is the other end (sock_diag).
        let table = try SockDiag(networkNamespaceOf: scenario.pid).table()
        func live(_ fd: Int32) throws -> UnixSocket? {
            let inode = try scenario.link(fd).dropFirst(8).dropLast()
            return table.unix.first { String($0.inode) == inode }
        }
        for (a, b) in [(Int32(20), Int32(21)), (22, 23)] {
            let (left, right) = (try live(a), try live(b))
            #expect(left?.peerInode == right?.inode && right?.peerInode == left?.inode, "fds \(a)/\(b)")
        }
        #expect(try live(20)?.type == "stream" && live(22)?.type == "dgram")
        // Queued bytes at each end, as the kernel counts them (stream: bytes; datagrams: the first's size).
        #expect(try live(20)?.receiveQueue == 22 && live(21)?.receiveQueue == 19)
        let listener = try live(24)
        #expect(listener?.state == "LISTEN" && listener?.name == scenario.log + ".sock" && listener?.sendQueue == 5, "\(String(describing: listener))")
        #expect(try scenario.fdinfo(22).contains("flags:\t04002\n"))
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
        #expect(try await scenario.check(3) == "CHECK n=3 PASS")
    }

    @Test func descriptorsSharingAnOpenFileDescriptionComeBackShared() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "shared")
        defer { scenario.remove() }
        // fds 1 and 2 are dup2s of fd 0 (the scenario's /dev/null), 41 a dup of 40.
        #expect(scenario.manifest.restore?.sharedDescriptions == [.init(fd: 1, sameAs: 0), .init(fd: 2, sameAs: 0), .init(fd: 41, sameAs: 40)])
        #expect(try Kernel.kcmpEqual(scenario.pid, scenario.pid, .file, 0, 2))
        let differences = try scenario.descriptorDifferences()
        #expect(differences == [], "\(differences)")
        #expect(try Kernel.kcmpEqual(scenario.pid, scenario.pid, .file, 40, 41))
        #expect(try !Kernel.kcmpEqual(scenario.pid, scenario.pid, .file, 40, 42))
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
    }

    @Test func timerfdsSignalfdsMemfdsAndDeletedFilesComeBack() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "files")
        defer { scenario.remove() }
        let differences = try scenario.descriptorDifferences()
        #expect(differences == [], "\(differences)")
        // fdinfo from outside: clocks, the absolute flag, the unread expiration, the signal mask.
        #expect(try scenario.fdinfo(30).contains("clockid: 1\n") && scenario.fdinfo(30).contains("it_interval: (100, 0)\n"))
        #expect(try scenario.fdinfo(31).contains("settime flags: 01\n"))
        #expect(try scenario.fdinfo(32).contains("clockid: 0\n") && scenario.fdinfo(32).contains("ticks: 1\n"))
        let signals = (1 << (SIGUSR2 - 1)) | (1 << (34 - 1))  // glibc's SIGRTMIN is 34
        let hex = String(signals, radix: 16)
        let signalfd = try scenario.fdinfo(33)
        #expect(signalfd.contains("sigmask:\t" + String(repeating: "0", count: 16 - hex.count) + hex + "\n"), "\(signalfd)")
        #expect(try scenario.link(34) == "/memfd:fds-memfd (deleted)" && scenario.link(35) == scenario.log + ".deleted (deleted)")
        #expect(!FileManager.default.fileExists(atPath: scenario.log + ".deleted"), "the recreated file is unlinked again")
        let contents = scenario.manifest.restore?.fileContents ?? []
        #expect(contents.map(\.fd) == [34, 35] && contents.map(\.size) == [10000, 16] && contents[0].seals == 4 | 2)
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
        #expect(try await scenario.check(3) == "CHECK n=3 PASS")
    }

    @Test func inotifyWatchesComeBackWithTheirNumbers() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "watch")
        defer { scenario.remove() }
        let differences = try scenario.descriptorDifferences()
        #expect(differences == [], "\(differences)")
        #expect(scenario.manifest.restore?.inotifyWatches == [.init(fd: 50, wd: 1, path: scenario.log + ".watchdir"),
                                                              .init(fd: 50, wd: 3, path: scenario.log + ".watched")])
        let watches = try scenario.fdinfo(50).split(separator: "\n").filter { $0.hasPrefix("inotify ") }.sorted()
        #expect(watches.count == 2 && watches[0].hasPrefix("inotify wd:1 ") && watches[1].hasPrefix("inotify wd:3 "), "\(watches)")
        #expect(watches[0].contains(" mask:300 ") && watches[1].contains(" mask:4000002 "), "\(watches)")
        let second = try await scenario.check(2)
        #expect(second == "CHECK n=2 PASS")
        #expect(try await scenario.check(3) == "CHECK n=3 PASS")
    }

    @Test func everyKindTogetherComesBack() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "inet,unix,files,shared,watch")
        defer { scenario.remove() }
        let differences = try scenario.descriptorDifferences()
        #expect(differences == [], "\(differences)")
        #expect(scenario.manifest.descriptors?.count == 26)
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
    }

    /// Segments outlive processes: the private one (marked for removal) went with the original,
    /// and is created again with its id; the keyed one stayed, unattached, and is attached again
    /// with the image's content.
    @Test func sysvSharedMemoryComesBackWithItsIdsAndContent() async throws {
        var keyed: Int32 = -1
        defer { if keyed >= 0 { shmctl(keyed, IPC_RMID, nil) } }
        let scenario = try await RestoredDescriptorScenario(kinds: "sysv") { _ in }
        defer { scenario.remove() }
        let segments = try #require(scenario.manifest.restore?.sysvSharedMemory).sorted { $0.size < $1.size }
        keyed = segments.first?.shmid ?? -1
        #expect(segments.map(\.size) == [2 * 4096, 3 * 4096] && segments.map(\.key) == [0x4d54_0000 + scenario.pid, 0])
        #expect(segments.map { $0.perms & 0o1777 } == [0o640, 0o1600])
        let live = try Kernel.sharedMemorySegments().filter { segment in segments.contains { $0.shmid == segment.shmid } }
        #expect(live.map(\.attachCount).sorted() == [1, 1], "\(live)")
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
        #expect(try await scenario.check(3) == "CHECK n=3 PASS")
        // The private one goes with the restored process, as it went with the original.
        endRestored(scenario.pid)
        let left = try Kernel.sharedMemorySegments().filter { segment in segments.contains { $0.shmid == segment.shmid } }
        #expect(left.map(\.shmid) == [keyed] && left.first?.attachCount == 0, "\(left)")
    }

    /// The scenario's second filter kills it on `getitimer`, which the checkpoint injects: the
    /// dump must suspend the filters for its calls, and the restore must put both back.
    @Test func seccompFiltersComeBack() async throws {
        let scenario = try await RestoredDescriptorScenario(kinds: "seccomp")
        defer { scenario.remove() }
        let state = try #require(scenario.manifest.restore?.seccomp)
        #expect(state.mode == 2 && state.filters.map(\.program.count) == [4, 4] && state.filters.map(\.flags) == [2, 0], "\(state.filters.map(\.flags))")
        #expect(scenario.manifest.restore?.seccompDiffers == nil)
        let status = ProcStatus(parsing: String(decoding: try Kernel.readFile("/proc/\(scenario.pid)/status"), as: UTF8.self))
        #expect(status["Seccomp"] == "2" && status["Seccomp_filters"] == "2" && status["NoNewPrivs"] == "1")
        #expect(try await scenario.check(2) == "CHECK n=2 PASS")
    }

    @Test func anInotifyWatchWhoseFileIsGoneIsRefusedByName() async throws {
        var log = ""
        do {
            _ = try await RestoredDescriptorScenario(kinds: "watch") { path in
                log = path
                unlink(path + ".watched")
            }
            Issue.record("restored a watch on a file that is gone")
        } catch let failure as RestoreFailure {
            let refusal = RestoreRefusal("fd 50 (anon_inode:inotify)", "watch 3: \(log).watched does not exist here")
            #expect(failure.description == "refused: \([refusal])")
        }
    }

    @Test func aUnixSocketPathSomeoneListensOnStopsTheRestore() async throws {
        var squatter: Int32 = -1
        defer { if squatter >= 0 { close(squatter) } }
        do {
            _ = try await RestoredDescriptorScenario(kinds: "unix") { log in
                // The original's socket file is stale; replace it with a live listener.
                unlink(log + ".sock")
                squatter = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
                var address = sockaddr_un()
                address.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array((log + ".sock").utf8) + [0]) }
                let bound = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(squatter, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
                guard bound == 0, listen(squatter, 1) == 0 else { throw RestoreFailure(description: "cannot listen on \(log).sock") }
            }
            Issue.record("restored over a live listener")
        } catch let RestoreError.failed(step, detail) {
            #expect(step.hasPrefix("binding the unix stream socket of fd 24 to /"), "\(step)")
            #expect(detail.hasPrefix("another process listens on /") && detail.hasSuffix("/fds.log.sock"), "\(detail)")
        }
    }

    /// Capturing descriptors peeks queues, reads sockets' options and files' bytes through copies:
    /// the original must be left exactly as it was (queues unread, peek offsets and file offsets
    /// unmoved, no descriptor added) and still pass its own check.
    @Test func capturingDescriptorsLeavesTheOriginalIntact() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/fds.log"
        let child = try await ScenarioProcess("restorefds", [log, "120", "inet,unix,files,shared"])
        defer { child.stop() }
        try await child.send("detach")
        kill(child.pid, SIGUSR1)
        #expect(try await CheckpointedScenario.awaitCheck(1, in: log) == "CHECK n=1 PASS")
        let before = try TargetHealth(pid: child.pid)
        let fdinfo = { (fd: Int32) in String(decoding: try Kernel.readFile("/proc/\(child.pid)/fdinfo/\(fd)"), as: UTF8.self) }
        let offsets = try [34, 35, 40, 42].map { try fdinfo($0).prefix { $0 != "\n" } }
        let session = try await CheckpointSession(pid: child.pid)
        let result: CheckpointResult
        do { result = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/image")) } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        #expect((result.manifest.restore?.sockets ?? []).count == 12)
        #expect(try TargetHealth(pid: child.pid).descriptors == before.descriptors)
        #expect(try TargetHealth.tracer(of: child.pid) == 0)
        #expect(try [34, 35, 40, 42].map { try fdinfo($0).prefix { $0 != "\n" } } == offsets)
        // The queues were peeked, not read: the process reads them itself, whole.
        kill(child.pid, SIGUSR1)
        #expect(try await CheckpointedScenario.awaitCheck(2, in: log) == "CHECK n=2 PASS")
    }
}

struct RestoreSocketRefusalTests {
    /// Refused when the image holds no repair state for it (`restore.connections`).
    @Test func anEstablishedTcpConnectionIsRefusedByName() {
        let state = SocketRestoreState(inode: 1, domain: 2, type: 1, protocol: 6, local: SocketAddress(address: "127.0.0.1", port: 6379),
                                       peer: SocketAddress(address: "127.0.0.1", port: 40000), listening: false, backlog: nil,
                                       tcpState: 1, options: [])
        #expect(RestorePlan.inetSocketProblem(state)
                == "a TCP connection 127.0.0.1:6379 → 127.0.0.1:40000 (ESTABLISHED) whose repair state the image does not hold (only ESTABLISHED connections are captured, by images of this version)")
        var unknown = state
        unknown.tcpState = 10
        unknown.listening = true
        #expect(RestorePlan.inetSocketProblem(unknown) == nil)
        unknown.options = [SocketOption(level: 1, name: 25, label: "SO_BINDTODEVICE", value: 0)]
        #expect(RestorePlan.inetSocketProblem(unknown) == "socket option SO_BINDTODEVICE (level 1, 25) is not one restore sets")
        var foreign = state
        foreign.tcpState = 10
        foreign.listening = true
        foreign.local = SocketAddress(address: "::1", port: 1)
        #expect(RestorePlan.inetSocketProblem(foreign) == "its address [::1]:1 is not one of its family")
        var raw = unknown
        raw.options = []
        raw.type = 3  // SOCK_RAW
        raw.protocol = 255
        #expect(RestorePlan.inetSocketProblem(raw) == "inet sockets of type 3, protocol 255 (raw, SCTP, ICMP…) are not restorable")
        raw.type = 2
        raw.protocol = 1  // ICMP on a datagram socket
        #expect(RestorePlan.inetSocketProblem(raw) == "inet sockets of type 2, protocol 1 (raw, SCTP, ICMP…) are not restorable")
    }

    @Test func unixSocketsWhosePeerIsOutsideAreRefusedByName() {
        let inside = SocketRestoreState(inode: 7, domain: 1, type: 1, protocol: 0, local: nil, peer: nil, listening: false, backlog: nil,
                                        tcpState: nil, options: [], peerInode: 8, queued: [])
        #expect(RestorePlan.unixSocketProblem(inside, held: [7: inside])
                == "its peer socket:[8] is outside the process; restoring it needs that process too")
        var other = inside
        other.inode = 8
        other.peerInode = 7
        #expect(RestorePlan.unixSocketProblem(inside, held: [7: inside, 8: other]) == nil)
        other.local = SocketAddress(path: Data("/run/x.sock".utf8))
        #expect(RestorePlan.unixSocketProblem(inside, held: [7: inside, 8: other])
                == "connected to the named socket /run/x.sock (socket:[8]) through a listener the process does not hold; only socketpairs and connections through the process's own listeners are restored")
        // A client of the process's own listener, and the end the listener accepted.
        var client = inside
        client.peer = other.local
        var listener = other
        listener.inode = 9
        listener.peerInode = nil
        listener.listening = true
        #expect(RestorePlan.unixSocketProblem(client, held: [7: client, 8: other]) != nil)
        #expect(RestorePlan.unixSocketProblem(client, held: [7: client, 8: other, 9: listener]) == nil)
        #expect(RestorePlan.unixSocketProblem(other, held: [7: client, 8: other, 9: listener]) == nil)
        var big = inside
        big.queued = nil
        #expect(RestorePlan.unixSocketProblem(big, held: [7: big]) == "its queue held more than 4194304 bytes, which the checkpoint does not keep")
    }

    /// The ancillary data of a queue is hostile input like the rest of an image.
    @Test func queuedAncillaryDataThatDoesNotAddUpIsRefusedByName() {
        var state = SocketRestoreState(inode: 7, domain: 1, type: 2, protocol: 0, local: nil, peer: nil, listening: false, backlog: nil,
                                       tcpState: nil, options: [], peerInode: 8, queued: [Data("a".utf8), Data()])
        let me = UnixCredentials(pid: 4000, uid: 0, gid: 0)
        state.ancillary = [QueuedAncillary(rights: [3], credentials: me), QueuedAncillary(credentials: UnixCredentials(pid: 0, uid: 65534, gid: 65534))]
        #expect(RestorePlan.queuedAncillaryProblem(state, numbers: [3, 7], imagePid: 4000) == nil)
        #expect(RestorePlan.queuedAncillaryProblem(state, numbers: [7], imagePid: 4000) == "queued message 0 carries fd 3, which the image does not hold")
        state.ancillary?[0].rights = Array(repeating: 3, count: 254)
        #expect(RestorePlan.queuedAncillaryProblem(state, numbers: [3], imagePid: 4000) == "queued message 0 carries 254 descriptors, more than a message can (253)")
        state.ancillary?[0].rights = nil
        // A sender that is gone: the kernel takes only a live pid in SCM_CREDENTIALS.
        var gone: Int32 = 4_000_000
        while Kernel.processExists(gone) { gone += 1 }
        state.ancillary?[1].credentials = UnixCredentials(pid: gone, uid: 0, gid: 0)
        #expect(RestorePlan.queuedAncillaryProblem(state, numbers: [], imagePid: 4000)
                == "queued message 1 carries the credentials of process \(gone), which does not exist here (the kernel sends only a live process's)")
        state.ancillary?[1].credentials = UnixCredentials(pid: getpid(), uid: 0, gid: 0)
        #expect(RestorePlan.queuedAncillaryProblem(state, numbers: [], imagePid: 4000) == nil)
        state.ancillary = [QueuedAncillary()]
        #expect(RestorePlan.queuedAncillaryProblem(state, numbers: [], imagePid: 4000) == "1 ancillary records for 2 queued messages")
    }
}
