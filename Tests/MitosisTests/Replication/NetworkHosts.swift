import Foundation
import Testing
@testable import MitosisKernel

/// Two test "hosts": network namespaces joined by a veth pair, with addresses only inside them
/// (`10.RR.SS.1` in `a`, `.2` in `b`). Made with iproute2 by the test itself and removed by
/// `remove()` — call it in a `defer`, so that a failing test leaves no namespace behind.
/// Commands run inside a host through `ip netns exec` (`prefix(_:)`), which keeps the pid.
struct NetworkHosts: Sendable {
    let a: String
    let b: String
    let addressA: String
    let addressB: String

    static let ip = "/usr/sbin/ip"

    init() async throws {
        // The creating pid is in the name, so that the next run removes what a killed test
        // process left (its defer never ran).
        await Self.sweep()
        let tag = String(getpid(), radix: 36) + "x" + String(UUID().uuidString.prefix(3)).lowercased()
        a = "mrep-\(tag)-a"
        b = "mrep-\(tag)-b"
        let subnet = "10.\(Int.random(in: 100...250)).\(Int.random(in: 1...250))"
        addressA = subnet + ".1"
        addressB = subnet + ".2"
        let steps: [[String]] = [
            ["netns", "add", a], ["netns", "add", b],
            ["link", "add", "v\(tag)a", "type", "veth", "peer", "name", "v\(tag)b"],
            ["link", "set", "v\(tag)a", "netns", a], ["link", "set", "v\(tag)b", "netns", b],
            ["-n", a, "addr", "add", addressA + "/24", "dev", "v\(tag)a"], ["-n", b, "addr", "add", addressB + "/24", "dev", "v\(tag)b"],
            ["-n", a, "link", "set", "lo", "up"], ["-n", b, "link", "set", "lo", "up"],
            ["-n", a, "link", "set", "v\(tag)a", "up"], ["-n", b, "link", "set", "v\(tag)b", "up"],
        ]
        for step in steps {
            let run = try await ToolRun(Self.ip, step)
            if run.status != 0 {
                await Self.remove(a, b, veth: "v\(tag)a")
                throw HarnessError("ip \(step.joined(separator: " ")) failed: \(run.standardError)")
            }
        }
    }

    /// `ip netns exec HOST`, to put before a command.
    func prefix(_ host: String) -> [String] { [Self.ip, "netns", "exec", host] }

    /// The network namespace's identity (`net:[…]`), to compare with `/proc/PID/ns/net`.
    func namespaceLink(_ host: String) async throws -> String {
        let run = try await ToolRun("/usr/bin/readlink", ["/proc/self/ns/net"], prefix: prefix(host))
        return run.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Removes both namespaces (the veth pair goes with them).
    func remove() async {
        await Self.remove(a, b, veth: nil)
    }

    private static func remove(_ a: String, _ b: String, veth: String?) async {
        if let veth { _ = try? await ToolRun(ip, ["link", "del", veth]) }
        _ = try? await ToolRun(ip, ["netns", "del", a])
        _ = try? await ToolRun(ip, ["netns", "del", b])
    }

    /// Removes the namespaces of test processes that no longer run (`mrep-PIDxRND-a|b`).
    static func sweep() async {
        for name in (try? Kernel.listDirectory("/run/netns")) ?? [] where name.hasPrefix("mrep-") {
            let tag = name.dropFirst(5).split(separator: "-").first ?? ""
            guard let creator = tag.split(separator: "x").first.flatMap({ Int32($0, radix: 36) }),
                  creator != getpid(), kill(creator, 0) != 0, errno == ESRCH else { continue }
            _ = try? await ToolRun(ip, ["netns", "del", name])
        }
    }

    /// Whether a namespace of that name still exists.
    static func exists(_ name: String) -> Bool {
        (try? Kernel.status("/run/netns/" + name)) != nil
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
