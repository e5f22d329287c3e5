import Foundation
import Glibc
import MitosisModel
import SystemPackage

/// The network lock: while a TCP connection is between its capture and its restore, no packet of
/// it may pass. A packet from the client reaching a host where the connection's socket is gone
/// would be answered with a RST, and the client would drop the connection; with the lock, it is
/// dropped instead, and TCP retransmits it once the restored socket exists.
///
/// The lock is an nftables table of its own (`inet mitosis-lock-PID-N`), created by `nft -i`
/// (Debian's `nftables` package), that drops, at the input and output hooks of the
/// connection's network namespace, every packet whose 4-tuple is a locked connection's, in
/// either direction. Only those connections: the namespace may be a shared host where other
/// services must keep talking (CRIU locks the whole namespace only when it dumps a namespace it
/// owns).
///
/// The table is created with `flags owner`: the kernel binds it to the netlink socket of the
/// `nft -i` process that created it, which lives exactly as long as this value's holder does
/// (its stdin is a pipe from Mitosis). When Mitosis exits or is killed, `nft` reads end of file
/// and exits, and the kernel deletes the table: a lock is never left behind.
///
/// One lock must outlive Mitosis: between `dump --kill` and the `restore` that follows, no
/// Mitosis process runs. `hold(as:)` copies the lock into a table without an owner, named for the
/// image (`mitosis-hold-…`, recorded in it); the restore takes a lock of its own, then lifts the
/// held one (`NetworkLock.remove`). A held table whose image is never restored stays, like CRIU's
/// rules after a dump: `nft delete table inet NAME` lifts it (the clients then see a reset).
package final class NetworkLock: @unchecked Sendable {
    /// The table's name (`mitosis-lock-PID-N`), unique among this process's locks.
    package let table: String
    private let holder: ChildProcess
    /// Set once `nft` is being ended; `lift` ends it on a thread of its own, hence the lock.
    private var released: Bool { releaseState.withLock { releasedValue } }
    private var releasedValue = false
    private let releaseState = NSLock()

    private static let counter = Counter()
    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int { lock.withLock { value += 1; return value } }
    }

    package enum Failure: Error, CustomStringConvertible {
        case unavailable(String)
        case refused(String)
        package var description: String {
            switch self {
            case .unavailable(let why): return "the network lock is unavailable: \(why)"
            case .refused(let why): return "nft refused the network lock: \(why)"
            }
        }
    }

    /// Where `nft` is looked for (Debian installs it in /usr/sbin).
    package static let nftPath = "/usr/sbin/nft"

    /// Starts `nft -i` in the network namespace at `namespacePath` (`/proc/PID/ns/net`; nil for
    /// Mitosis's own) with this lock's table, empty, ready to `lock`: starting takes milliseconds,
    /// so a checkpoint does it before the freeze and only locks during it (about 3 ms here).
    package init(namespacePath: String? = nil, timeout: Duration = .seconds(10)) throws {
        guard (try? Kernel.status(Self.nftPath)) != nil else {
            throw Failure.unavailable("\(Self.nftPath) is missing (Debian package nftables; scripts/setup installs it)")
        }
        table = "mitosis-lock-\(Kernel.currentProcessID())-\(Self.counter.next())"
        self.timeout = timeout
        holder = try ChildProcess(executable: Self.nftPath, arguments: ["-i"], namespacePath: namespacePath)
        // The table, empty (it drops nothing yet): `nft` reads the kernel's ruleset into its
        // cache on its first command, several milliseconds that `lock` then does not spend.
        do {
            try run("add table inet \(table) { flags owner; }", then: "list table inet \(table)")
        } catch {
            holder.kill()
            throw error
        }
    }

    /// Locks `connections` (this end's and the peer's endpoints) in the network namespace at
    /// `namespacePath`. Returns once the rules are in force. Blocks on the `nft` child: call it
    /// from a dedicated thread (`Blocking.run`).
    package convenience init(_ connections: [(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint)],
                             namespacePath: String? = nil, timeout: Duration = .seconds(10)) throws {
        try self.init(namespacePath: namespacePath, timeout: timeout)
        try lock(connections)
    }

    /// Locks `connections`: creates this lock's table. Once per lock. Blocks on `nft`; on
    /// failure `nft` is ended.
    package func lock(_ connections: [(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint)]) throws {
        guard self.connections == nil, !released else { throw Failure.refused("this lock was already used") }
        do {
            try run(try Self.tableCommand(table, connections, owned: true), then: "list chain inet \(table) output")
            self.connections = connections
        } catch {
            release()
            throw error
        }
    }

    private var connections: [(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint)]?
    private let timeout: Duration

    /// Whether `nft` still runs for this lock (a failed command ends it).
    package var isUsable: Bool { !released }

    /// Lifts the lock but keeps `nft` running, its table empty again, for the next `lock`: a
    /// session that captures connections at every checkpoint (replication, 20 a second) starts
    /// `nft` once rather than once per checkpoint. Nothing locked: nothing to do. Blocks on
    /// `nft`; on failure `nft` is ended (its exit deletes the table).
    package func unlock() throws {
        guard connections != nil, !released else { return }
        do {
            try run("delete table inet \(table)\nadd table inet \(table) { flags owner; }", then: "list table inet \(table)")
            connections = nil
        } catch {
            release()
            throw error
        }
    }

    /// Sends `command` to `nft`, then `listing`, and waits until `nft` has printed the listing:
    /// it runs commands in order, so `command` is then in force. The listing is a chain, not the
    /// whole table: printing the sets' elements takes far longer than adding them (2,000
    /// elements: 83 ms to add and list the chain, 537 ms more to list the table, here).
    private func run(_ command: String, then listing: String) throws {
        try holder.write(Array((command + "\n" + listing + "\n").utf8))
        try awaitListing(timeout: timeout)
    }

    /// Copies the lock into table `name`, which has no owner: it stays when Mitosis exits, until
    /// `NetworkLock.remove(name)`. For a lock that must outlive this process (`dump --kill`).
    package func hold(as name: String) throws {
        guard let connections, !released else { throw Failure.refused("nothing is locked") }
        try run(try Self.tableCommand(name, connections, owned: false), then: "list chain inet \(name) output")
    }

    /// Deletes table `name` (a held lock) in the namespace at `namespacePath`; one that does not
    /// exist is no error. Blocks on `nft`.
    package static func remove(_ name: String, namespacePath: String? = nil) throws {
        let child = try ChildProcess(executable: nftPath, arguments: ["delete", "table", "inet", name], namespacePath: namespacePath)
        child.closeInput()
        let (_, errors) = child.readToEnd()
        let status = child.wait()
        let message = String(decoding: errors, as: UTF8.self)
        guard ChildProcess.exitCode(of: status) == 0 || message.contains("No such file or directory") else {
            throw Failure.refused(message.split(separator: "\n").first.map(String.init) ?? "nft exited with \(ChildProcess.exitCode(of: status))")
        }
    }

    /// The one `nft` command that creates the whole table: two sets of 4-tuples (IPv4 and IPv6),
    /// and a chain at each of the input and output hooks dropping what matches, before conntrack
    /// (`priority raw`).
    static func tableCommand(_ table: String, _ connections: [(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint)],
                             owned: Bool) throws -> String {
        var v4: [String] = [], v6: [String] = []
        for connection in connections {
            for (from, to) in [(connection.local, connection.remote), (connection.remote, connection.local)] {
                guard var fromBytes = InetAddress.bytes(from.address, family: connection.family),
                      var toBytes = InetAddress.bytes(to.address, family: connection.family) else {
                    throw Failure.refused("\(from) → \(to) is not an \(connection.family) connection")
                }
                // A dual-stack socket's IPv4-mapped peer (::ffff:a.b.c.d) sends IPv4 packets.
                let mapped: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
                if connection.family == .ipv6 && fromBytes.starts(with: mapped) && toBytes.starts(with: mapped) {
                    fromBytes.removeFirst(12)
                    toBytes.removeFirst(12)
                }
                let element = "\(text(fromBytes)) . \(from.port) . \(text(toBytes)) . \(to.port)"
                if fromBytes.count == 4 { v4.append(element) } else { v6.append(element) }
            }
        }
        func set(_ name: String, _ type: String, _ elements: [String]) -> String {
            "set \(name) { type \(type) . inet_service . \(type) . inet_service; "
                + (elements.isEmpty ? "" : "elements = { \(elements.joined(separator: ", ")) }; ") + "}; "
        }
        let match = "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop; ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop;"
        return "add table inet \(table) { \(owned ? "flags owner; " : "")"
            + set("conns4", "ipv4_addr", v4) + set("conns6", "ipv6_addr", v6)
            + "chain input { type filter hook input priority raw; policy accept; \(match) }; "
            + "chain output { type filter hook output priority raw; policy accept; \(match) }; }"
    }

    /// An address in the form nft reads: dotted quad, or eight hex groups.
    private static func text(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
    }

    /// Waits until `nft` has printed a listing (its last closing brace), or fails on anything it
    /// writes to stderr, its exit, or the timeout.
    private func awaitListing(timeout: Duration) throws {
        let deadline = ContinuousClock.now + timeout
        var output: [UInt8] = [], errors: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if String(decoding: output, as: UTF8.self).contains("\n}\n") { return }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw Failure.refused("no answer from nft within \(timeout)") }
            var fds = [pollfd(fd: holder.output!, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: holder.errorOutput!, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, 100) <= 0 { continue }
            for (index, entry) in fds.enumerated() where entry.revents != 0 {
                let n = chunk.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    throw Failure.refused("nft exited: \(String(decoding: errors, as: UTF8.self).split(separator: "\n").first ?? "")")
                }
                if index == 0 { output += chunk[0..<n] } else {
                    errors += chunk[0..<n]
                    // Give nft a moment to finish its message (three lines: error, command, caret).
                    usleep(20_000)
                    let more = chunk.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                    if more > 0 { errors += chunk[0..<more] }
                    throw Failure.refused(String(decoding: errors, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "")
                }
            }
        }
    }

    /// Lifts the lock: deletes the table and ends `nft` (whose exit would delete it anyway).
    /// Idempotent. Blocks briefly on the child's exit.
    package func release() {
        let first = releaseState.withLock { () -> Bool in
            defer { releasedValue = true }
            return !releasedValue
        }
        guard first else { return }
        try? holder.write(Array("delete table inet \(table)\n".utf8))
        holder.closeInput()
        holder.wait()
    }

    /// Lifts the lock from async code, then lets `nft` go. Returns once the rules are out of
    /// force (`unlock`: one answer from the running `nft`, about a millisecond); the end of
    /// `nft`, whose exit deletes the emptied table (11–77 ms seen under load, the longest part
    /// of a warm promotion's finish), is waited for on a thread of its own, off the caller's path.
    /// A process about to exit first waits for those ends (`awaitEnds`), so that nothing of it
    /// outlives it.
    package func lift() async {
        try? await Blocking.run("mitosis-network-unlock") { [self] in try unlock() }
        Self.ending.begin()
        Thread.detachNewThread { [self] in
            release()
            Self.ending.end()
        }
    }

    /// Waits until the `nft` of every lock `lift` let go has ended, or `timeout` passed.
    package static func awaitEnds(timeout: Duration) {
        ending.wait(until: Date(timeIntervalSinceNow: Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18))
    }

    private static let ending = Ending()

    /// How many `nft` ends are under way.
    private final class Ending: @unchecked Sendable {
        private let condition = NSCondition()
        private var count = 0

        func begin() { condition.withLock { count += 1 } }

        func end() {
            condition.withLock {
                count -= 1
                condition.broadcast()
            }
        }

        func wait(until deadline: Date) {
            condition.withLock {
                while count > 0 && condition.wait(until: deadline) {}
            }
        }
    }

    deinit { release() }
}

extension ChildProcess {
    /// `executable arguments…` with pipes for every stream, in the network namespace at
    /// `namespacePath` (through util-linux's `nsenter`) when given.
    fileprivate convenience init(executable: String, arguments: [String], namespacePath: String?) throws {
        if let namespacePath {
            try self.init(executable: "/usr/bin/nsenter", arguments: ["--net=\(namespacePath)", "--", executable] + arguments,
                          stdin: .pipe, stdout: .pipe, stderr: .pipe)
        } else {
            try self.init(executable: executable, arguments: arguments, stdin: .pipe, stdout: .pipe, stderr: .pipe)
        }
    }
}
