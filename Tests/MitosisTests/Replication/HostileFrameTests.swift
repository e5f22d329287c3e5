import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisReplication

/// A real standby fed hostile bytes: each case one log line, the connection dropped (or refused
/// with a reason), nothing committed, the standby serving on.
@Suite struct HostileFrameTests {
    /// Connects to 127.0.0.1:`port`, sends `bytes`, half-closes if asked, and reads until the
    /// standby closes the connection (or 5 s pass). Blocking: on a thread of its own.
    static func exchange(_ port: Int, _ bytes: [UInt8], halfClose: Bool = false) async throws -> (reply: [UInt8], closed: Bool) {
        try await Blocking.run("hostile-client") {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw HarnessError("socket failed") }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { throw HarnessError("connect failed: \(errno)") }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if halfClose { shutdown(fd, Int32(SHUT_WR)) }
            var reply: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n > 0 { reply += chunk[0..<n]; continue }
                return (reply, n == 0 || errno == ECONNRESET)
            }
        }
    }

    /// The frames of a reply: (type, payload).
    static func frames(_ bytes: [UInt8]) -> [(UInt16, [UInt8])] {
        var result: [(UInt16, [UInt8])] = []
        var at = 0
        while bytes.count - at >= ReplicationFrame.headerSize {
            let type = UInt16(bytes[at + 6]) | UInt16(bytes[at + 7]) << 8
            let length = Int(bytes.littleEndianUInt32(at: at + 32))
            guard bytes.count - at >= ReplicationFrame.headerSize + length else { break }
            result.append((type, Array(bytes[(at + 48)..<(at + 48 + length)])))
            at += ReplicationFrame.headerSize + length
        }
        return result
    }

    static func hello(term: UInt64) -> [UInt8] {
        let hello = Hello(pid: 4321, node: "hostile", pageSize: CheckpointHeader.systemPageSize, formatVersion: 2, deltaBase: nil)
        return ReplicationFrame(.hello, term: Term(term), payload: Array(try! JSONOutput.encoder(pretty: false).encode(hello))).bytes
    }

    @Test func hostileFramesAreDroppedOrRefusedAndNothingIsCommitted() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let images = scratch.path + "/standby"
        let standby = try ServiceProcess(["standby", "--listen", "127.0.0.1:0", "--images", images], in: [], log: scratch.path + "/standby.log")
        try await standby.awaitLog("listening on")
        let marker = "listening on 127.0.0.1:"
        let port = try #require(standby.text.range(of: marker).flatMap { Int(standby.text[$0.upperBound...].prefix(while: \.isNumber)) })
        let stateType = FrameType.state.rawValue, refuseType = FrameType.refuse.rawValue

        // Garbage: dropped at its first bytes.
        var run = try await Self.exchange(port, Array("GET / HTTP/1.1\r\nHost: standby\r\n\r\n".utf8) + [UInt8](repeating: 0x41, count: 64))
        #expect(run.closed && run.reply.isEmpty)
        // A checksum that does not match.
        var damaged = Self.hello(term: 5)
        damaged[damaged.count - 3] ^= 0x20
        run = try await Self.exchange(port, damaged)
        #expect(run.closed && run.reply.isEmpty)
        // A length beyond the bound: dropped from the header alone.
        var huge = ReplicationFrame(.imagePages, term: Term(5), epoch: Epoch(1), payload: [1, 2, 3]).bytes
        huge.replaceSubrange(32..<36, with: [0xff, 0xff, 0xff, 0x7f])
        run = try await Self.exchange(port, Self.hello(term: 5) + huge)
        #expect(run.closed && Self.frames(run.reply).map(\.0) == [stateType])
        // A frame cut short by the end of the connection.
        let begin = ReplicationFrame(.imageBegin, term: Term(5), epoch: Epoch(1),
                                     payload: Array(try JSONOutput.encoder(pretty: false).encode(CheckpointHeader(kind: .full, sequence: 0, pid: 4321)))).bytes
        run = try await Self.exchange(port, Self.hello(term: 5) + begin + Array(begin.prefix(30)), halfClose: true)
        #expect(run.closed && Self.frames(run.reply).map(\.0) == [stateType])
        // Pages before any epoch began.
        run = try await Self.exchange(port, Self.hello(term: 5) + ReplicationFrame(.imagePages, term: Term(5), epoch: Epoch(9), payload: [UInt8](repeating: 0, count: 4104)).bytes)
        #expect(run.closed && Self.frames(run.reply).map(\.0) == [stateType])
        // An epoch over a parent the standby does not hold: refused, a full base is needed.
        let orphan = ReplicationFrame(.imageBegin, term: Term(5), epoch: Epoch(2), parent: Epoch(1),
                                      payload: Array(try JSONOutput.encoder(pretty: false).encode(
                                        CheckpointHeader(kind: .incremental, parent: ParentLink(path: "../x", id: "nope"), sequence: 1, pid: 4321)))).bytes
        run = try await Self.exchange(port, Self.hello(term: 5) + orphan)
        var replies = Self.frames(run.reply)
        #expect(run.closed && replies.map(\.0) == [stateType, refuseType])
        #expect(replies.last.map { try? JSONOutput.decoder().decode(Refusal.self, from: Data($0.1)) }??.code == .parentMismatch)
        // A frame from an older term (the standby has seen term 5): refused.
        run = try await Self.exchange(port, Self.hello(term: 3))
        replies = Self.frames(run.reply)
        #expect(run.closed && replies.map(\.0) == [refuseType])
        #expect(replies.first.map { try? JSONOutput.decoder().decode(Refusal.self, from: Data($0.1)) }??.code == .olderTerm)

        // The standby serves on, committed nothing, left no work behind, and recorded term 5.
        #expect(standby.child.isRunning)
        let state = try await Self.exchange(port, Self.hello(term: 5), halfClose: true)
        let answer = try #require(Self.frames(state.reply).first)
        let decoded = try JSONOutput.decoder().decode(StandbyState.self, from: Data(answer.1))
        #expect(decoded.committed == nil && decoded.term == Term(5))
        #expect(StandbyImages.newest(images) == nil && StandbyImages.hiddenEntries(images).isEmpty)
        #expect(String(decoding: try Kernel.readFile(images + "/TERM"), as: UTF8.self) == "5\n")
        #expect(await standby.stop(SIGTERM) == 0)
        let lines = standby.text.split(separator: "\n")
        for needle in ["not in flight", "bad magic", "checksum mismatch", "exceeds", "ended inside a frame", "parent-mismatch", "older-term"] {
            #expect(lines.filter { $0.contains(needle) }.count >= 1, "one log line for '\(needle)':\n\(standby.text)")
        }
    }

    @Test func framesRoundTripAndEveryDamagedByteIsCaught() throws {
        let all = Set(FrameType.allCases)
        let frame = ReplicationFrame(.imagePages, term: Term(7), epoch: Epoch(42), parent: Epoch(41), payload: Array(0..<200))
        let bytes = frame.bytes
        #expect(bytes.count == ReplicationFrame.headerSize + 200)
        #expect(try ReplicationFrameDecoder.decode(bytes, accepting: all) == frame)
        // Any single damaged byte is caught: an error, or (a longer length) a wait for more bytes.
        for index in bytes.indices {
            var damaged = bytes
            damaged[index] ^= 0x01
            #expect(((try? ReplicationFrameDecoder.decode(damaged, accepting: all)) ?? nil) == nil, "byte \(index)")
        }
        // A prefix of a frame asks for more bytes.
        for length in 0..<bytes.count {
            #expect(try ReplicationFrameDecoder.decode(Array(bytes.prefix(length)), accepting: all) == nil)
        }
        // A frame this end does not take is refused by its type.
        #expect(throws: ProtocolViolation.self) { try ReplicationFrameDecoder.decode(bytes, accepting: [.state, .ack, .refuse]) }
    }
}

@Suite struct ReplicationMessageTests {
    /// What the standby answers decodes on the primary as sent (the snake-case coders included).
    @Test func messagesRoundTrip() throws {
        let state = StandbyState(committed: CommittedEpoch(epoch: Epoch(42), imageID: "A-B"), term: Term(3), ready: false, reasons: ["why"])
        #expect(try MessageCoding.decode(StandbyState.self, MessageCoding.encode(state)) == state)
        let hello = Hello(pid: 7, node: "n", pageSize: 4096, formatVersion: 2, deltaBase: CommittedEpoch(epoch: Epoch(41), imageID: "x"))
        #expect(try MessageCoding.decode(Hello.self, MessageCoding.encode(hello)) == hello)
        let delta = FileDelta(path: "/a/b", kind: .append, offset: 10, size: 20, mode: 0o644)
        #expect(try MessageCoding.decode(FileDelta.self, MessageCoding.encode(delta)) == delta)
        #expect(try MessageCoding.decode(Refusal.self, MessageCoding.encode(Refusal(.olderTerm, "r"))) == Refusal(.olderTerm, "r"))
    }
}

@Suite struct ReplicationErrorTests {
    @Test func replicationFailuresAreMitosisFailures() {
        #expect(ReplicationError.nothingCommitted("/x").code == "replication.nothingCommitted")
        #expect(ReplicationError.refused(Refusal(.olderTerm, "r")).summary == "the standby refused: older-term: r")
        #expect(ProtocolViolation("bad magic").code == "replication.protocolViolation")
    }
}
