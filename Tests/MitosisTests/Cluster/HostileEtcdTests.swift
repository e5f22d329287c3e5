import Foundation
import MitosisCluster
import MitosisClusterTestbed
import NIOCore
import NIOPosix
import Testing

/// A fake etcd gateway on loopback that answers every request with the same bytes: what a
/// broken or hostile etcd (or something else on its port) could send.
private final class FakeGateway: Sendable {
    let port: Int
    private let channel: any Channel

    init(answer: [UInt8], closeAfter: Bool = true) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.pipeline.addHandler(Responder(answer: answer, closeAfter: closeAfter))
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress?.port ?? 0
    }

    /// A client whose deadline is long enough for a megabyte on a loaded machine.
    var client: EtcdClient { client(timeout: .seconds(5)) }

    func client(timeout: Duration) -> EtcdClient {
        EtcdClient(endpoints: [EtcdEndpoint(host: "127.0.0.1", port: port)], requestTimeout: timeout)
    }

    func close() async { try? await channel.close() }

    /// Answers once the request's JSON body has ended (`}`); an empty answer never answers.
    private final class Responder: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let answer: [UInt8]
        let closeAfter: Bool
        init(answer: [UInt8], closeAfter: Bool) {
            self.answer = answer
            self.closeAfter = closeAfter
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            guard buffer.readableBytesView.last == UInt8(ascii: "}"), !answer.isEmpty else { return }
            let done = context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: answer)))
            if closeAfter {
                let channel = context.channel
                done.whenComplete { _ in channel.close(promise: nil) }
            }
        }
        typealias OutboundOut = ByteBuffer
    }
}

private func http(_ body: String, status: String = "200 OK") -> [UInt8] {
    Array("HTTP/1.1 \(status)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
}

private func chunked(_ lines: [String]) -> [UInt8] {
    var text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    for line in lines { text += String(line.utf8.count + 1, radix: 16) + "\r\n" + line + "\n\r\n" }
    return Array(text.utf8)
}

@Suite("Hostile etcd answers")
struct HostileEtcdTests {
    static let header = #""header":{"cluster_id":"1","member_id":"18446744073709551615","revision":"5","raft_term":"2"}"#

    /// Each malformed range answer and the error it must give.
    static let rangeCases: [(String, String)] = [
        ("not json at all", "malformed"),
        (#"{"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1"}]}"#, "malformed"),  // no header
        ("{\(header),\"kvs\":[{\"key\":\"***\",\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\"}]}", "malformed"),
        ("{\(header),\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"-2\",\"mod_revision\":\"2\",\"version\":\"1\"}]}", "malformed"),
        ("{\(header),\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"99999999999999999999\",\"mod_revision\":\"2\",\"version\":\"1\"}]}", "malformed"),
        ("{\(header),\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"1\",\"version\":\"1\"}]}", "malformed"),
        ("{\(header),\"kvs\":[{\"key\":\"\",\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\"}]}", "malformed"),
        ("{\(header),\"kvs\":[{\"key\":\"/w==\",\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\"}]}", "malformed"),  // not UTF-8
        ("{\(header),\"kvs\":{\"key\":\"Zm9v\"}}", "malformed"),
        ("{\(header),\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"2\",\"version\":\"1\",\"value\":\"\(String(repeating: "A", count: 90_000))\"}]}", "tooLarge"),
        ("{\(header),\"pad\":\"\(String(repeating: "x", count: 1_100_000))\"}", "tooLarge"),
    ]

    @Test("malformed, oversized or lying range answers give one clear error", arguments: 0..<rangeCases.count)
    func hostileRange(_ index: Int) async throws {
        let (body, kind) = Self.rangeCases[index]
        let gateway = try await FakeGateway(answer: http(body))
        defer { Task { await gateway.close() } }
        do {
            _ = try await gateway.client.get("/foo")
            Issue.record("case \(index) decoded")
        } catch let error as EtcdError {
            let text = "\(error)"
            #expect(text.contains(kind == "tooLarge" ? "over" : "malformed"), "case \(index): \(text)")
            #expect(!text.contains("\n") && text.count < 400)
        }
    }

    @Test("an answer that never comes times out at the request deadline")
    func silentGateway() async throws {
        let gateway = try await FakeGateway(answer: [])
        defer { Task { await gateway.close() } }
        let start = ContinuousClock.now
        await #expect(throws: EtcdError.timedOut(endpoint: "http://127.0.0.1:\(gateway.port)", operation: "kv/range", milliseconds: 300)) {
            _ = try await gateway.client(timeout: .milliseconds(300)).get("/foo")
        }
        // It does not hang (the deadline is the error's; a loaded parallel run delays the timer by seconds).
        #expect(ContinuousClock.now - start < .seconds(60))
    }

    @Test("an error status becomes `rejected` with etcd's message; a keepalive with TTL 0 is an expired lease")
    func rejectedAndExpired() async throws {
        let failing = try await FakeGateway(answer: http(#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#, status: "503 Service Unavailable"))
        defer { Task { await failing.close() } }
        await #expect(throws: EtcdError.rejected(endpoint: "http://127.0.0.1:\(failing.port)", operation: "kv/range", httpStatus: 503, code: 14,
                                                 message: "etcdserver: request timed out")) {
            _ = try await failing.client.get("/foo")
        }
        let expired = try await FakeGateway(answer: http("{\"result\":{\(Self.header),\"ID\":\"7\"}}"))
        defer { Task { await expired.close() } }
        await #expect(throws: EtcdError.leaseExpired(id: 7)) { _ = try await expired.client.keepAlive(7) }
        let wrongLease = try await FakeGateway(answer: http("{\"result\":{\(Self.header),\"ID\":\"8\",\"TTL\":\"1\"}}"))
        defer { Task { await wrongLease.close() } }
        await #expect(throws: EtcdError.self) { _ = try await wrongLease.client.keepAlive(7) }
    }

    @Test("a watch stream with a garbage or oversized message ends with one error")
    func hostileWatch() async throws {
        let created = "{\"result\":{\(Self.header),\"created\":true}}"
        for (lines, expected) in [([created, "garbage"], "malformed"),
                                  ([created, "{\"result\":{\(Self.header),\"events\":[{\"type\":\"EXPLODE\",\"kv\":{\"key\":\"Zm9v\"}}]}}"], "malformed"),
                                  ([created, String(repeating: "x", count: 1_200_000)], "over")] {
            let gateway = try await FakeGateway(answer: chunked(lines), closeAfter: false)
            var failure: String?
            do {
                for try await _ in gateway.client.watch("/foo") {}
            } catch {
                failure = "\(error)"
            }
            #expect(failure?.contains(expected) == true, "\(failure ?? "no error")")
            await gateway.close()
        }
    }

    @Test("endpoint strings other than http://HOST:PORT are refused")
    func endpointParsing() {
        #expect(EtcdEndpoint("http://10.0.0.1:2379") == EtcdEndpoint(host: "10.0.0.1", port: 2379))
        #expect(EtcdEndpoint("etcd-1:2379") == EtcdEndpoint(host: "etcd-1", port: 2379))
        for bad in ["https://a:1", "a", "a:0", "a:65536", "a:12x", "http://u@a:1", "http://a:1/x", ":1", "a b:1", "", String(repeating: "a", count: 300) + ":1"] {
            #expect(EtcdEndpoint(bad) == nil, "\(bad)")
        }
    }

    @Test("member records from etcd are decoded strictly")
    func memberRecords() {
        let good = MemberRecord(node: "b", role: .standby, term: 4, epoch: 17, ready: true, replicationAddress: "10.0.0.2:7100", following: "a")
        #expect((try? MemberRecord.decode(good.encoded()).get()) == good)
        let bad: [String] = [
            "", "null", "[]", "{}", #"{"node":"B","role":"standby","term":1,"epoch":1,"ready":true,"replicationAddress":"x"}"#,
            #"{"node":"b","role":"king","term":1,"epoch":1,"ready":true,"replicationAddress":"x"}"#,
            #"{"node":"b","role":"standby","term":-1,"epoch":1,"ready":true,"replicationAddress":"x"}"#,
            #"{"node":"b","role":"standby","term":1,"epoch":1e30,"ready":true,"replicationAddress":"x"}"#,
            #"{"node":"b","role":"standby","term":1,"epoch":1,"ready":"yes","replicationAddress":"x"}"#,
            #"{"node":"../x","role":"standby","term":1,"epoch":1,"ready":true,"replicationAddress":"x"}"#,
            #"{"node":"b","role":"standby","term":1,"epoch":1,"ready":true,"replicationAddress":"x","following":"A B"}"#,
            "{\"node\":\"b\",\"role\":\"standby\",\"term\":1,\"epoch\":1,\"ready\":true,\"replicationAddress\":\"x\",\"reason\":\"\(String(repeating: "r", count: 300))\"}",
            String(repeating: " ", count: 5000),
        ]
        for text in bad {
            guard case .failure(let error) = MemberRecord.decode(Array(text.utf8)) else {
                Issue.record("decoded: \(text.prefix(80))")
                continue
            }
            #expect(!error.description.isEmpty)
        }
    }
}
