import ArgumentParser
import Foundation
import Mitosis

/// Brings a checkpointed process back to life from an image chain.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a checkpointed process from an image (full or incremental), with its pid and thread ids.",
        discussion: """
            The process comes back on this host with its memory, threads, registers, signal \
            dispositions and descriptors, and runs on detached. --check only says whether the \
            image can be restored here, listing every reason it cannot. A restore that fails \
            leaves no process behind. See Docs/restore.md for what is restored and what is refused.
            """)

    @Argument(help: "The image directory (any committed image of a chain).") var image: String
    @Flag(help: "Only check whether the image can be restored here; list what is refused and why.") var check = false
    @Flag(help: "Restore inside a new pid namespace (under a small init that is pid 1 there), so that a pid taken here does not matter.") var pidns = false
    @Flag(help: "Print the result as JSON.") var json = false
    @Flag(help: "Do not lock the image's TCP connections while their sockets are rebuilt (a peer's packet may meet no socket and be answered with a reset).")
    var noNetworkLock = false
    @Option(help: "Restore into this network namespace, a second host: a name (/run/netns/NAME, as `ip netns add` makes) or the path of a network namespace file.")
    var netns: String?
    @Option(help: "Give the process a time namespace whose monotonic and boot clocks continue from the checkpoint's: auto (when this host's clocks differ from the image's by more than 1 s beyond the time that passed), on, off.")
    var timens: TimeNamespaceChoice = .auto

    func run() async throws {
        do {
            if TreeImage.isTree(image) {
                try await restoreTree()
                return
            }
            var restorer = try Restorer(image: CheckpointImage.open(image))
            restorer.networkLock = !noNetworkLock
            restorer.networkNamespace = netns
            restorer.timeNamespace = timens
            if check {
                let refusals = restorer.refusals()
                if json {
                    print(try JSONOutput.string(CheckReport(image: image, restorable: refusals.isEmpty, refusals: refusals)))
                } else if refusals.isEmpty {
                    print("\(image): restorable here (process \(restorer.manifest.pid), \(restorer.manifest.threads.count) threads, \(restorer.manifest.descriptors?.count ?? 0) descriptors)")
                } else {
                    print("\(image): not restorable here:")
                    for refusal in refusals { print("  \(refusal)") }
                }
                if !refusals.isEmpty { throw ExitCode(1) }
                return
            }
            let result = try await restorer.restore(inNewPidNamespace: pidns)
            if json {
                print(try JSONOutput.string(JSONResult(pid: result.pid, hostPid: result.hostPid, threads: result.threads, descriptors: result.descriptors,
                                                       restoreMs: result.restoreMilliseconds, phasesMs: result.phases,
                                                       networkNamespace: result.networkNamespace, timeNamespace: result.timeNamespace,
                                                       notes: result.notes)))
            } else {
                let host = result.hostPid.map { " (pid \($0) on this host, in a new pid namespace)" } ?? ""
                print("restored process \(result.pid)\(host) (\(result.threads) threads, \(result.descriptors) descriptors) from \(image) in \(String(format: "%.1f", result.restoreMilliseconds)) ms")
                for line in Self.placementLines(result) { print(line) }
                for note in result.notes { print("  note: \(note)") }
            }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            fail(error)
        }
    }

    /// A tree image (`dump --tree`): every member, top-down, with its pid and parentage.
    func restoreTree() async throws {
        var restorer = try TreeRestorer(image: TreeImage.open(image))
        restorer.networkLock = !noNetworkLock
        let members = restorer.manifest.members.map { String($0.pid) }.joined(separator: ", ")
        if check {
            let refusals = restorer.refusals()
            if json {
                print(try JSONOutput.string(CheckReport(image: image, restorable: refusals.isEmpty, refusals: refusals)))
            } else if refusals.isEmpty {
                print("\(image): restorable here (process tree of \(restorer.manifest.root): \(members))")
            } else {
                print("\(image): not restorable here:")
                for refusal in refusals { print("  \(refusal)") }
            }
            if !refusals.isEmpty { throw ExitCode(1) }
            return
        }
        restorer.networkNamespace = netns
        restorer.timeNamespace = timens
        let result = try await restorer.restore(inNewPidNamespace: pidns)
        if json {
            print(try JSONOutput.string(result))
        } else {
            let space = pidns ? ", in a new pid namespace" : ""
            print("restored process tree of \(result.root) (\(result.members.count) processes: \(members)\(space)) from \(image) in \(String(format: "%.1f", result.restoreMilliseconds)) ms")
            for (member, restored) in zip(restorer.manifest.members, result.members) {
                let host = restored.hostPid.map { ", pid \($0) on this host" } ?? ""
                print("  process \(restored.pid) (parent \(member.parent), session \(member.session), group \(member.processGroup)\(host)): \(restored.threads) threads, \(restored.descriptors) descriptors")
            }
            for line in result.members.first.map(Self.placementLines) ?? [] { print(line) }
            for note in result.notes { print("  note: \(note)") }
        }
    }

    /// Where a restored process lives, when not simply here: its network and time namespaces.
    static func placementLines(_ result: RestoreResult) -> [String] {
        var lines: [String] = []
        if let namespace = result.networkNamespace { lines.append("  in network namespace \(namespace)") }
        if let time = result.timeNamespace {
            lines.append("  in a time namespace of its own: its clocks continue from the checkpoint's (monotonic offset \(seconds(time.monotonicOffset)) s, boottime offset \(seconds(time.boottimeOffset)) s; without it the monotonic clock would have jumped \(String(format: "%.3f", time.monotonicJumpSeconds)) s)")
        }
        return lines
    }

    /// A time offset in seconds, to the microsecond.
    static func seconds(_ value: TimeSpec) -> String {
        String(format: "%.6f", Double(value.seconds) + Double(value.nanoseconds) / 1e9)
    }

    struct CheckReport: Codable {
        var image: String
        var restorable: Bool
        var refusals: [RestoreRefusal]
    }

    struct JSONResult: Codable {
        var pid: Int32
        /// The pid as this host sees it, when restored in a new pid namespace.
        var hostPid: Int32?
        var threads: Int
        var descriptors: Int
        var restoreMs: Double
        /// Milliseconds per phase (see `RestoreResult.phases`).
        var phasesMs: [String: Double]
        var networkNamespace: String?
        var timeNamespace: RestoredTimeNamespace?
        var notes: [String]
    }
}

extension TimeNamespaceChoice: ExpressibleByArgument {}
