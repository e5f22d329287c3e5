import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// The `packetsock` scenario in network namespaces the test creates: packet sockets restored
/// "where simple", bound again by interface name in another namespace that numbers its
/// interfaces otherwise; a ring and a fanout group refused by name.
@Suite(.serialized) struct PacketSocketRestoreTests {
    /// A network namespace with a veth pair `pk0`–`pk1`, up; `dummies` other veth pairs made first, so that
    /// the pair's indexes differ between namespaces.
    struct Host {
        let name: String
        init(_ role: String, dummies: Int = 0) async throws {
            name = "mitosis-pk\(role)-\(getpid())"
            _ = try await ToolRun("/usr/sbin/ip", ["netns", "del", name])
            var commands = [["netns", "add", name]]
            for index in 0..<dummies { commands.append(["-n", name, "link", "add", "d\(index)a", "type", "veth", "peer", "name", "d\(index)b"]) }
            commands += [["-n", name, "link", "add", "pk0", "type", "veth", "peer", "name", "pk1"],
                         ["-n", name, "link", "set", "pk0", "up"], ["-n", name, "link", "set", "pk1", "up"]]
            for command in commands {
                let run = try await ToolRun("/usr/sbin/ip", command)
                guard run.status == 0 else { throw RestoreFailure(description: "ip \(command.joined(separator: " ")): \(run.standardError)") }
            }
        }
        var path: String { "/run/netns/\(name)" }
        func index(_ link: String) async throws -> Int {
            let run = try await ToolRun("/usr/sbin/ip", ["-n", name, "-o", "link", "show", link])
            return Int(run.standardOutput.split(separator: ":").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? "") ?? -1
        }
        func remove() async { _ = try? await ToolRun("/usr/sbin/ip", ["netns", "del", name]) }
    }

    /// Runs `body` with hosts made for it, and removes them on every path.
    static func withHosts(_ roles: [(String, Int)], _ body: ([Host]) async throws -> Void) async throws {
        var hosts: [Host] = []
        do {
            for (role, dummies) in roles { hosts.append(try await Host(role, dummies: dummies)) }
            try await body(hosts)
        } catch {
            for host in hosts { await host.remove() }
            throw error
        }
        for host in hosts { await host.remove() }
    }

    @Test func aBoundPacketSocketComesBackOnTheInterfaceOfItsNameInAnotherNamespace() async throws {
        try await Self.withHosts([("A", 0), ("B", 2)]) { hosts in try await boundSocketRestored(hosts[0], hosts[1]) }
    }

    func boundSocketRestored(_ a: Host, _ b: Host) async throws {
        let scratch = try ScratchDirectory()
        var restored: Int32?
        defer {
            if let restored { kill(restored, SIGKILL) }
            scratch.remove()
        }
        let child = try await ScenarioProcess("packetsock", [a.path, "pk0", "pk1", "plain"])
        defer { child.stop() }
        let pid = child.pid
        let indexA = try await a.index("pk0"), indexB = try await b.index("pk0")
        #expect(try child.intFact("ifindex") == indexA)
        #expect(indexA != indexB)
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        let socket = "/tmp/mitosis-pk-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socket) }
        try await child.send("commands \(socket)")
        #expect(try await ScenarioRestoreTests.ask(socket, "check") == "READY check=PASS")
        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(pid), "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        child.stop()
        unlink(socket)
        let manifest = try CheckpointImage.open(image).manifest
        let inode20 = try #require(manifest.descriptors?.first { $0.fd == 20 }?.inode)
        let state = try #require(manifest.restore?.sockets?.first { $0.inode == inode20 })
        #expect(state.domain == 17 && state.type == 2)
        #expect(state.packet == PacketBinding(interfaceIndex: Int32(indexA), interface: "pk0", protocolNumber: UInt16(0x88b5).bigEndian, ring: false, fanout: 0))
        #expect(state.options.filter { $0.label.hasPrefix("PACKET_") && $0.value != 0 }.map { "\($0.label)=\($0.value)" }
                == ["PACKET_VERSION=1", "PACKET_AUXDATA=1"])

        let run = try await ToolRun(ToolRun.mitosis, ["restore", image, "--netns", b.name])
        #expect(run.status == 0, "\(run.standardError)")
        restored = pid
        // In host B, bound to B's pk0: /proc/PID/net/packet lists its inode with B's index.
        let fd20 = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/20")
        let inode = fd20.dropFirst("socket:[".count).dropLast()
        let row = try String(contentsOfFile: "/proc/\(pid)/net/packet", encoding: .utf8).split(separator: "\n")
            .map { $0.split(separator: " ") }.first { $0.last.map(String.init) == String(inode) }
        // sk RefCnt Type Proto Iface R Rmem User Inode
        #expect(row.map { [String($0[2]), String($0[3]), String($0[4])] } == ["2", "88b5", String(indexB)])
        #expect(try await ScenarioRestoreTests.ask(socket, "check") == "READY check=PASS")
    }

    @Test(arguments: [
        ("ring", "it has a PACKET_RX_RING/PACKET_TX_RING ring (frames in memory mapped from the socket); packet rings are not restorable"),
        ("fanout", "it is in PACKET_FANOUT group 77 (type 0); fanout groups are not restorable"),
    ])
    func aRingOrAFanoutGroupIsRefusedByName(_ mode: String, _ reason: String) async throws {
        try await Self.withHosts([("R" + mode, 0)]) { hosts in try await refused(hosts[0], mode, reason) }
    }

    func refused(_ a: Host, _ mode: String, _ reason: String) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let child = try await ScenarioProcess("packetsock", [a.path, "pk0", "pk1", mode])
        defer { child.stop() }
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(child.pid), "--images", image])
        #expect(dump.status == 0, "\(dump.standardError)")
        // The dump changed nothing: the ring and the group are still there, the check passes.
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        let manifest = try CheckpointImage.open(image).manifest
        let target = try #require(manifest.descriptors?.first { $0.fd == 22 }?.target)
        let refusals = try Restorer(image: CheckpointImage.open(image)).refusals().map(\.description)
        // fds 0–2 are the test's pipes; the packet sockets 20 and 21 are restorable.
        #expect(refusals.filter { !["fd 0 ", "fd 1 ", "fd 2 "].contains(where: $0.hasPrefix) } == ["fd 22 (\(target)): \(reason)"])
    }
}
