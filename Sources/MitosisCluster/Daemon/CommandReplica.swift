import Foundation
import Logging
import MitosisKernel
import MitosisModel

/// The replica of a service without replication: a cold standby that starts the service's
/// command at promotion. Its epoch is always 0, so every ready node is equal and the first
/// in name order wins.
///
/// It stands where the hot standby (protect / standby / promote) will plug in, and serves
/// stateless services or services whose state is elsewhere. The service is started through
/// `setpriv --pdeathsig KILL` from a thread that lives as long as the daemon, so a daemon
/// killed with SIGKILL takes its service with it: a dead daemon never leaves a primary
/// answering after its lease expired.
public final class CommandReplica: ReplicaControl, @unchecked Sendable {
    public let command: [String]
    private let logger: Logger
    private let lock = NSLock()
    private var child: ChildProcess?
    private var term: Int64 = 0
    private static let spawner = DedicatedThreadExecutor(name: "mitosis-cluster-spawner")

    public init(command: [String], logger: Logger) {
        self.command = command
        self.logger = logger
    }

    public func state() async -> ReplicaState {
        let term = lock.withLock { self.term }
        guard let executable = command.first, FileManager.default.isExecutableFile(atPath: executable) else {
            return ReplicaState(term: term, epoch: 0, ready: false, reason: "start command \(command.first ?? "(none)") is not an executable file")
        }
        return ReplicaState(term: term, epoch: 0, ready: true, reason: "cold standby (starts \(executable) at promotion)")
    }

    public func follow(leader: String, term: Int64) async throws {
        lock.withLock { self.term = max(self.term, term) }
    }

    public func promote(term: Int64) async throws {
        let command = self.command
        let started = try Self.spawner.sync {
            // Descriptors 0–2 only: the daemon's sockets and epolls are none of the service's
            // business (and an inherited epoll watching them would make it unrestorable).
            try ChildProcess(executable: "/usr/bin/setpriv", arguments: ["--pdeathsig", "KILL", "--"] + command,
                             stdin: .null, stdout: .inherit, stderr: .inherit, onlyStandardStreams: true)
        }
        lock.withLock {
            child = started
            self.term = term
        }
        // A command that dies at once (bad arguments, port taken) is a failed promotion.
        try await Task.sleep(for: .milliseconds(50))
        guard started.isRunning else {
            lock.withLock { child = nil }
            throw ClusterError.serviceExited(command: command.joined(separator: " "), status: ChildProcess.exitCode(of: started.wait()))
        }
        logger.info("service started: \(command[0]), pid \(started.pid)")
    }

    public func protect(term: Int64, standbys: [MemberRecord]) async throws {}

    public func fence() async {
        guard let child = lock.withLock({ self.child }) else { return }
        try? Kernel.sendSignal(pid: child.pid, Linux.SIGSTOP)
    }

    public func resume(term: Int64) async throws {
        guard let child = lock.withLock({ () -> ChildProcess? in self.term = max(self.term, term); return self.child }), child.isRunning else {
            throw ClusterError.promotion("no fenced service to resume")
        }
        try Kernel.sendSignal(pid: child.pid, Linux.SIGCONT)
        logger.info("service resumed: pid \(child.pid)")
    }

    public func discard() async {
        guard let child = lock.withLock({ () -> ChildProcess? in defer { self.child = nil }; return self.child }) else { return }
        _ = try? await Blocking.run("mitosis-cluster-reap") { child.kill() }
    }
}

/// A failure of the cluster daemon's own actions on this host (domain `cluster`).
public enum ClusterError: MitosisFailure, Equatable {
    /// The service's start command exited right after it was started: a failed promotion.
    case serviceExited(command: String, status: Int32)
    /// The service address could not be added.
    case address(cidr: String, device: String, reason: String)
    /// The replica cannot promote or protect (nothing to promote, no service running).
    case promotion(String)

    public var description: String {
        switch self {
        case .serviceExited(let command, let status): "the service exited at once (status \(status)): \(command.prefix(200))"
        case .address(let cidr, let device, let reason): "ip addr replace \(cidr) dev \(device) failed: \(reason)"
        case .promotion(let why): why
        }
    }
}

/// The service address on this host: `ip addr replace` and a gratuitous ARP to take it,
/// `ip addr del` to drop it.
public struct HostAddress: AddressControl, Equatable {
    /// `A.B.C.D/N`.
    public let cidr: String
    public let device: String

    public init(cidr: String, device: String) {
        self.cidr = cidr
        self.device = device
    }

    public var address: String { String(cidr.prefix { $0 != "/" }) }

    public func take() async throws {
        let run = try await Self.run("/usr/bin/ip", ["addr", "replace", cidr, "dev", device])
        guard run.status == 0 else { throw ClusterError.address(cidr: cidr, device: device, reason: run.error) }
        // Orphaned TCP sockets of an earlier service on this host (discarded, or killed with
        // its host's processes) still hold their addresses and ports: closing ones retransmit
        // their FIN for minutes, unanswered once the address was dropped. A restore rebuilds the
        // connections with the same four addresses and ports, and its connect fails with
        // EADDRNOTAVAIL on such a socket (seen in `mitosis-bench failover`). Only sockets no
        // process owns any more are in these states; a resumed service's own stay.
        _ = try? await Self.run("/usr/bin/ss", ["-K", "-t", "-n", "state", "fin-wait-1", "state", "fin-wait-2", "state", "closing",
                                                "state", "last-ack", "state", "time-wait", "src", address])
        // Unsolicited ARP: neighbours replace the old host's MAC at once. arping waits a
        // second for replies that never come, so it is not waited for (reaped in the background).
        let arping = try ChildProcess(executable: "/usr/bin/arping", arguments: ["-U", "-c", "1", "-I", device, address],
                                      stdin: .null, stdout: .null, stderr: .null)
        Task.detached { _ = try? await Blocking.run("mitosis-arping") { arping.wait() } }
    }

    public func release() async {
        _ = try? await Self.run("/usr/bin/ip", ["addr", "del", cidr, "dev", device])
    }

    private static func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, error: String) {
        let child = try ChildProcess(executable: executable, arguments: arguments, stdin: .null, stdout: .null, stderr: .pipe)
        return try await Blocking.run("mitosis-ip") {
            let (_, error) = child.readToEnd()
            return (ChildProcess.exitCode(of: child.wait()), String(decoding: error.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}
