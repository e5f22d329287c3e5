import Foundation
import Glibc
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// The `unixinflight` scenario: unix queues holding messages with descriptors in flight
/// (`SCM_RIGHTS`) and credentials (`SCM_CREDENTIALS`), a zero-length datagram at the head.
@Suite struct UnixInFlightRestoreTests {
    /// Each descriptor's link target, by number (`/proc/PID/fd`).
    static func descriptorTable(_ pid: Int32) throws -> [String: String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
        return Dictionary(uniqueKeysWithValues: try names.map { ($0, try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) })
    }

    /// The `scm_fds:` line of a unix socket's fdinfo: descriptors in flight in its queue.
    static func inFlightCount(_ pid: Int32, fd: Int32) throws -> String? {
        try String(contentsOfFile: "/proc/\(pid)/fdinfo/\(fd)", encoding: .utf8).split(separator: "\n")
            .first { $0.hasPrefix("scm_fds:") }.map { String($0.split(whereSeparator: { $0 == " " || $0 == "\t" }).last ?? "") }
    }

    @Test func aCheckpointRecordsTheMessagesAndLeavesTheQueuesAndTheDescriptorTableAsTheyWere() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/scenario.log"
        let child = try await ScenarioProcess("unixinflight", [log])
        defer { child.stop() }
        let pid = child.pid
        let inode = UInt64(try child.fact("inode"))!
        // The check peeks every message: the head's zero-length datagram is marked peeked.
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        let before = try Self.descriptorTable(pid)
        #expect(try Self.inFlightCount(pid, fd: 21) == "4")
        #expect(try Self.inFlightCount(pid, fd: 23) == "1")

        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(pid), "--images", scratch.path + "/image"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try Self.descriptorTable(pid) == before)
        #expect(try Self.inFlightCount(pid, fd: 21) == "4")
        #expect(try Self.inFlightCount(pid, fd: 23) == "1")
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        #expect(try TargetHealth.tracer(of: pid) == 0)

        let record = try #require(try CheckpointImage.open(scratch.path + "/image").manifest.restore)
        let descriptors = try CheckpointImage.open(scratch.path + "/image").manifest.descriptors ?? []
        let top = descriptors.map(\.fd).max()!
        let inFlight = record.inFlight ?? []
        // LOG.data read-write at offset 3, the pipe's write end, the stream socket's far end.
        #expect(inFlight.map(\.fd) == [top + 1, top + 2, top + 3])
        #expect(inFlight.map(\.kind) == [.file, .pipe, .socket])
        #expect(inFlight[0].inode == inode && inFlight[0].position == 3 && inFlight[0].flags & 3 == 2)
        #expect(inFlight[0].flags & UInt32(O_CLOEXEC) == 0)
        #expect(inFlight[1].inode == descriptors.first { $0.fd == 24 }!.inode && inFlight[1].flags & 3 == 1)
        let sockets = Dictionary((record.sockets ?? []).map { ($0.inode, $0) }, uniquingKeysWith: { a, _ in a })
        let inode21 = descriptors.first { $0.fd == 21 }!.inode, inode23 = descriptors.first { $0.fd == 23 }!.inode
        let dgram = try #require(sockets[inode21]), stream = try #require(sockets[inode23])
        #expect(dgram.queued == [Data(), Data("file".utf8), Data("pipe".utf8), Data("dup".utf8), Data("creds".utf8), Data("pair".utf8)])
        let me = UnixCredentials(pid: pid, uid: 0, gid: 0)
        #expect(dgram.ancillary == [
            QueuedAncillary(credentials: UnixCredentials(pid: 0, uid: 65534, gid: 65534)),
            QueuedAncillary(rights: [top + 1], credentials: me),
            QueuedAncillary(rights: [top + 2], credentials: me),
            QueuedAncillary(rights: [25], credentials: me),
            QueuedAncillary(credentials: UnixCredentials(pid: pid, uid: 4242, gid: 4243)),
            QueuedAncillary(rights: [top + 3], credentials: me),
        ])
        // The stream: one run up to the message carrying fd 25 (a peek shows no boundary inside).
        #expect(stream.queued == [Data("abcdef".utf8), Data("ghi".utf8)])
        #expect(stream.ancillary?.map(\.rights) == [[25], nil])
        // The socket in flight, paired with fd 26, its own queue kept.
        let far = try #require(sockets[inFlight[2].inode])
        #expect(far.peerInode == descriptors.first { $0.fd == 26 }!.inode && far.queued == [Data("to-b1".utf8)])
        // The peek put SO_PASSCRED back where it was off (20, 22) and left it on where it was on.
        #expect(dgram.options.first { $0.label == "SO_PASSCRED" }?.value == 1)
        #expect(sockets[descriptors.first { $0.fd == 20 }!.inode]?.options.first { $0.label == "SO_PASSCRED" }?.value == 0)
    }

    @Test func dumpKillAndRestoreBringTheMessagesBackWithTheirDescriptorsAndCredentials() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/scenario.log"
        let child = try await ScenarioProcess("unixinflight", [log])
        defer { child.stop() }
        let pid = child.pid
        let socket = "/tmp/mitosis-uf-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socket) }
        try await child.send("commands \(socket)")
        #expect(try await ScenarioRestoreTests.ask(socket, "check") == "READY check=PASS")
        let before = try Self.descriptorTable(pid)
        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(pid), "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        child.stop()
        unlink(socket)

        let restorer = try Restorer(image: CheckpointImage.open(image))
        #expect(restorer.refusals().isEmpty, "\(restorer.refusals())")
        let result = try await restorer.restore()
        defer { endRestored(pid) }
        #expect(result.pid == pid)
        // No descriptor in flight is left in the table; the queues carry them again.
        // 0–2 /dev/null, 3 the command listener, 20–26 the scenario's (4 is the command
        // connection while one is served); the descriptors in flight were numbered from 27.
        let expected: Set<Int> = [0, 1, 2, 3, 20, 21, 22, 23, 24, 25, 26]
        #expect(Set(before.keys.compactMap { Int($0) }).subtracting([4]) == expected)
        let after = try Self.descriptorTable(pid)
        #expect(Set(after.keys.compactMap { Int($0) }).subtracting([4]) == expected, "\(after)")
        #expect(try Self.inFlightCount(pid, fd: 21) == "4")
        #expect(try Self.inFlightCount(pid, fd: 23) == "1")
        #expect(try await ScenarioRestoreTests.ask(socket, "check") == "READY check=PASS")
        #expect(try await ScenarioRestoreTests.ask(socket, "check") == "READY check=PASS")
    }
}
