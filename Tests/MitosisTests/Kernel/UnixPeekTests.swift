import Foundation
import Glibc
import SystemPackage
import Testing
@testable import MitosisKernel

/// `Kernel.peekMessages` on queues whose writer has gone: what a checkpoint of a process holding
/// one end of a socket pair whose other end was closed finds.
@Suite("Peeking a unix socket's queue")
struct UnixPeekTests {
    @Test("the peer closed: every queued message once, the queue left as it was (a stream's end came with credentials and was peeked for ever)",
          arguments: [Int32(SOCK_STREAM.rawValue), Int32(SOCK_SEQPACKET.rawValue)])
    func peerClosed(type: Int32) throws {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw Errno(rawValue: errno) }
        let reader = FileDescriptor(rawValue: fds[0])
        defer { try? reader.close() }
        #expect(write(fds[1], "abc", 3) == 3)
        #expect(write(fds[1], "de", 2) == 2)
        close(fds[1])
        let stream = type == Int32(SOCK_STREAM.rawValue)
        let messages = try #require(try Kernel.peekMessages(reader, stream: stream, limit: 1 << 20))
        // A stream glues one writer's bytes into one run; a sequenced-packet socket keeps each.
        #expect(messages.map { String(decoding: $0.bytes, as: UTF8.self) } == (stream ? ["abcde"] : ["abc", "de"]))
        #expect(messages.allSatisfy { $0.rights.isEmpty })
        // Nothing was taken: the reader reads it all, then the end.
        var buffer = [UInt8](repeating: 0, count: 16)
        var read: [String] = []
        while true {
            let n = recv(fds[0], &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n <= 0 { #expect(n == 0); break }
            read.append(String(decoding: buffer[..<n], as: UTF8.self))
        }
        #expect(read.joined() == "abcde")
    }
}
