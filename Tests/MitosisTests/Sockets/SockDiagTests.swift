import Glibc
import Testing
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel

@Suite("SockDiag")
struct SockDiagTests {
    @Test("reports TCP, UDP, UNIX, netlink and packet sockets with their exact state")
    func everyFamily() async throws {
        let child = try await ScenarioProcess("sockets")
        defer { child.stop() }
        defer { unlink(child.facts["dgram_path"] ?? "") }
        let before = try TargetHealth(pid: child.pid)
        let table = try SockDiag(networkNamespaceOf: child.pid).table()
        let sockets = table.byInode()
        func inode(_ fd: Int) throws -> UInt64 { UInt64(try child.intFact("inode\(fd)")) }
        func inet(_ fd: Int) throws -> InetSocket? {
            if case .inet(let s) = sockets[try inode(fd)] { return s } else { return nil }
        }
        func unix(_ fd: Int) throws -> UnixSocket? {
            if case .unix(let s) = sockets[try inode(fd)] { return s } else { return nil }
        }
        #expect(table.unavailable == [])

        let tcp4 = try #require(try inet(3))
        #expect(tcp4.protocol == .tcp && tcp4.family == .ipv4 && tcp4.state == "LISTEN")
        let (tcp4Port, tcp6Port, udpPort) = (try child.fact("tcp4_port"), try child.fact("tcp6_port"), try child.fact("udp_port"))
        #expect(tcp4.local.description == "127.0.0.1:\(tcp4Port)")
        #expect(tcp4.remote.description == "0.0.0.0:*")
        #expect(tcp4.receiveQueue == 0 && tcp4.sendQueue == 16 && tcp4.uid == 0)
        let tcp6 = try #require(try inet(4))
        #expect(tcp6.family == .ipv6 && tcp6.state == "LISTEN" && tcp6.v6Only == true)  // bound to ::1, not ::
        #expect(tcp6.local.description == "[::1]:\(tcp6Port)")
        #expect(tcp6.remote.description == "[::]:*")
        let udp = try #require(try inet(5))
        #expect(udp.protocol == .udp && udp.state == "UNCONN")
        #expect(udp.local.description == "127.0.0.1:\(udpPort)")

        let listener = try #require(try unix(6))
        #expect(listener.type == "stream" && listener.state == "LISTEN")
        let abstractName = try child.fact("abstract")
        #expect(listener.name == "@\(abstractName)" && listener.abstract)
        #expect(listener.receiveQueue == 1 && listener.sendQueue == 4)
        let client = try #require(try unix(7))
        #expect(listener.pendingConnections == [client.inode])
        // Its peer is the server end the kernel created, which no descriptor holds until accept().
        #expect(client.state == "ESTABLISHED" && client.name == nil && client.peerInode == 0)
        let shut = try #require(try unix(8))
        let peer = try #require(try unix(9))
        let (inode8, inode9) = (try inode(8), try inode(9))
        #expect(shut.peerInode == inode9 && peer.peerInode == inode8)
        #expect(shut.shutdown == .write && peer.shutdown == .read)
        #expect(shut.receiveQueue == 5 && peer.receiveQueue == 0)
        let dgram = try #require(try unix(10))
        #expect(dgram.type == "dgram" && dgram.state == "UNCONN")
        let path = try child.fact("dgram_path")
        #expect(dgram.name == path && !dgram.abstract)

        guard case .netlink(let netlink) = sockets[try inode(11)] else { Issue.record("no netlink socket"); return }
        #expect(netlink.protocol == "route" && netlink.portID == UInt32(child.pid) && netlink.state == "UNCONN")
        guard case .packet(let packet) = sockets[try inode(12)] else { Issue.record("no packet socket"); return }
        #expect(packet.type == "raw" && packet.ethernetProtocol == 0x0003 && packet.uid == 0 && packet.interface == 0)

        let after = try TargetHealth(pid: child.pid)
        #expect(after == before)
    }

    @Test("finds the sockets of a target in its own network namespace without moving the tool")
    func otherNamespace() async throws {
        let child = try await ScenarioProcess("netns", ["7777"])
        defer { child.stop() }
        #expect(!SockDiag.sharesNetworkNamespace(with: child.pid))
        let ownNamespace = try Kernel.readLink("/proc/self/ns/net")
        let sockets = try SockDiag(networkNamespaceOf: child.pid).table().byInode()
        let namespaceAfter = try Kernel.readLink("/proc/self/ns/net")
        #expect(namespaceAfter == ownNamespace)
        let clientPort = try child.fact("client_port")
        guard case .inet(let listener) = sockets[UInt64(try child.intFact("listen_inode"))],
              case .inet(let client) = sockets[UInt64(try child.intFact("client_inode"))],
              case .inet(let server) = sockets[UInt64(try child.intFact("server_inode"))]
        else { Issue.record("sockets of the namespace not found"); return }
        #expect(listener.state == "LISTEN" && listener.local.description == "127.0.0.1:7777")
        #expect(client.state == "ESTABLISHED" && client.local.description == "127.0.0.1:\(clientPort)")
        #expect(client.remote.description == "127.0.0.1:7777")
        #expect(server.local.description == "127.0.0.1:7777" && server.remote.description == "127.0.0.1:\(clientPort)")
        // The tool's own namespace does not hold them.
        let own = try SockDiag().table().byInode()
        #expect(own[listener.inode] == nil && own[client.inode] == nil)
    }
}
