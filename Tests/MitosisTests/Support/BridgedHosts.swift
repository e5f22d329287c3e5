import Foundation
import Testing
@testable import MitosisKernel

/// Test "hosts" on one Ethernet segment: a network namespace each, joined by veth links to a
/// bridge that sits in a "switch" namespace of its own (ClusterTestbed's layout, without etcd),
/// so that an address can move from one host to another (`ip addr del/add` + `arping -U`) while
/// a client on a third keeps its connections. Every address lives inside these namespaces; the
/// test machine's namespace gains nothing. `remove()` deletes every namespace (their links go
/// with them) and kills what still runs in them — call it in a `defer`.
struct BridgedHosts: Sendable {
    let tag: String
    /// The hosts' namespace names, in the order asked.
    let hosts: [String]
    /// `10.R.S`: host `i` has `10.R.S.(i+1)/24` on its `eth0`.
    let subnet: String
    var switchNamespace: String { "\(tag)-sw" }

    static let ip = "/usr/sbin/ip"

    init(_ names: [String]) async throws {
        let tag = "mbr" + String(UUID().uuidString.prefix(6)).lowercased()
        self.tag = tag
        hosts = names.map { "\(tag)-\($0)" }
        subnet = "10.\(Int.random(in: 100...250)).\(Int.random(in: 1...250))"
        var steps: [[String]] = [["netns", "add", "\(tag)-sw"], ["-n", "\(tag)-sw", "link", "add", "br0", "type", "bridge"],
                                 ["-n", "\(tag)-sw", "link", "set", "br0", "up"]]
        for (index, host) in hosts.enumerated() {
            let port = "\(tag)\(index)"
            steps += [["netns", "add", host], ["-n", host, "link", "set", "lo", "up"],
                      ["-n", "\(tag)-sw", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host],
                      ["-n", "\(tag)-sw", "link", "set", port, "master", "br0", "up"],
                      ["-n", host, "addr", "add", "\(subnet).\(index + 1)/24", "dev", "eth0"], ["-n", host, "link", "set", "eth0", "up"]]
        }
        for step in steps {
            let run = try await ToolRun(Self.ip, step)
            if run.status != 0 {
                await remove()
                throw HarnessError("ip \(step.joined(separator: " ")) failed: \(run.standardError)")
            }
        }
    }

    func address(_ index: Int) -> String { "\(subnet).\(index + 1)" }
    func path(_ index: Int) -> String { "/run/netns/" + hosts[index] }

    /// Runs `command` inside host `index` (`ip netns exec`, which keeps the pid) to completion.
    @discardableResult
    func run(_ index: Int, _ command: [String]) async throws -> ToolRun {
        try await ToolRun(Self.ip, ["netns", "exec", hosts[index]] + command)
    }

    /// Adds or deletes `address/24` on host `index`'s `eth0`.
    func setAddress(_ address: String, on index: Int, present: Bool) async throws {
        let run = try await ToolRun(Self.ip, ["-n", hosts[index], "addr", present ? "add" : "del", address + "/24", "dev", "eth0"])
        guard run.status == 0 else { throw HarnessError("ip addr \(present ? "add" : "del") \(address): \(run.standardError)") }
    }

    /// Tells the segment that `address` is now at host `index` (gratuitous ARP, iputils-arping).
    func announce(_ address: String, from index: Int) async throws {
        let run = try await self.run(index, ["/usr/bin/arping", "-U", "-c", "2", "-w", "2", "-I", "eth0", address])
        guard run.status == 0 || run.standardOutput.contains("Sent") else { throw HarnessError("arping -U \(address): \(run.standardError)") }
    }

    /// The network namespace's identity (`net:[…]`), to compare with `/proc/PID/ns/net`.
    func namespaceLink(_ index: Int) async throws -> String {
        try await run(index, ["/usr/bin/readlink", "/proc/self/ns/net"]).standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The nftables tables of host `index`, one "table inet NAME" per line.
    func tables(_ index: Int) async throws -> [String] {
        try await run(index, [NetworkLock.nftPath, "list", "tables"]).standardOutput.split(separator: "\n").map(String.init)
    }

    /// Kills what runs in each namespace and deletes them.
    func remove() async {
        for name in hosts + [switchNamespace] {
            if let pids = try? await ToolRun(Self.ip, ["netns", "pids", name]) {
                for pid in pids.standardOutput.split(separator: "\n").compactMap({ Int32($0) }) { try? Kernel.sendSignal(pid: pid, 9) }
            }
            _ = try? await ToolRun(Self.ip, ["netns", "del", name])
        }
    }
}
