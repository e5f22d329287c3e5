import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// The self-checking scenarios (`check` → `check=PASS`, the architecture issue's ZDTM shape),
/// each started, told to take its commands from a unix socket (`commands PATH`) (so that it holds nothing of
/// the test), dumped by `mitosis dump --kill`, and restored: a restorable one must answer
/// `check=PASS` again over the socket; one holding what restore refuses must be refused with
/// exactly the reasons named, and no process may appear.
@Suite struct ScenarioRestoreTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var arguments: [String] = []
        /// The refusals expected, each `(subject, reason)`; empty: restored and PASS. A subject
        /// may name a mapping of the scenario by the fact holding its address and its page count.
        var refusals: [Refusal] = []
        var testDescription: String { name }
    }

    enum Refusal: Sendable {
        /// A mapping of `pages` pages at the address the scenario reported as `fact`.
        case mapping(fact: String, pages: UInt64, reason: String)
        case subject(String, reason: String)

        func order(_ facts: [String: String]) -> UInt64 {
            guard case .mapping(let fact, _, _) = self else { return 0 }
            return UInt64(facts[fact]!.dropFirst(2), radix: 16)!
        }
    }

    static let cases: [Case] = [
        Case(name: "acceptance", arguments: ["LOG", "8", "2", "120"]),
        Case(name: "restorefds", arguments: ["LOG", "120", "inet,unix,files,shared"]),
        Case(name: "unixinflight", arguments: ["LOG"]),
        Case(name: "unixnamed", arguments: ["LOG"]),
        Case(name: "fifo", arguments: ["LOG"]),
        // ITIMER_REAL fired with SIGALRM blocked: armed, its signal pending, re-armed only when taken.
        Case(name: "alarm", arguments: ["blocked"]),
        Case(name: "memory", refusals: [
            .mapping(fact: "file", pages: 16, reason: "maps a deleted file: the image holds only the pages the process wrote, not the file; not restorable yet"),
        ]),
        Case(name: "sharedmem", refusals: [
            .mapping(fact: "memfd", pages: 64, reason: "maps memfd:mitosis-shared; memfd mappings are not restorable yet (memfd descriptors are)"),
        ]),
        Case(name: "leaderless", refusals: [
            .subject("thread PID", reason: "the main thread had exited; restoring a process without it is not supported"),
        ]),
    ]

    @Test(arguments: cases)
    func theScenarioIsRestoredAndPassesOrIsRefusedByName(_ scenario: Case) async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let arguments = scenario.arguments.map { $0 == "LOG" ? scratch.path + "/scenario.log" : $0 }
        let child = try ScenarioProcess(scenario.name, arguments)
        defer { child.stop() }
        let pid = child.pid
        var facts: [String: String] = [:]
        for case .mapping(let fact, _, _) in scenario.refusals { facts[fact] = try child.fact(fact) }
        // The acceptance scenario's check asks that each of its timers (every 50 ms at the
        // slowest) fired since the previous check.
        try await Task.sleep(for: .milliseconds(150))
        try child.send("check")
        #expect(try child.fact("check") == "PASS")
        try await Task.sleep(for: .milliseconds(150))
        // A short path: sun_path holds 108 bytes.
        let socket = "/tmp/mitosis-sc-\(UUID().uuidString.prefix(8)).sock"
        defer { unlink(socket) }
        try child.send("commands \(socket)")
        #expect(try await Self.ask(socket, "check") == "READY check=PASS")

        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(pid), "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        child.stop()
        unlink(socket)  // the dead original's socket file: restore finds it stale either way

        let restorer = try Restorer(image: CheckpointImage.open(image))
        // In address order, as restore lists the mappings.
        let expected = scenario.refusals.sorted { $0.order(facts) < $1.order(facts) }.map { refusal -> String in
            switch refusal {
            case .mapping(let fact, let pages, let reason):
                let start = UInt64(facts[fact]!.dropFirst(2), radix: 16)!
                let mapping = restorer.manifest.mappings.first { $0.start == start }
                return "mapping 0x\(String(start, radix: 16))-0x\(String(start + pages * 4096, radix: 16)) \(mapping?.path ?? "[anonymous]"): \(reason)"
            case .subject(let subject, let reason):
                return "\(subject.replacingOccurrences(of: "PID", with: String(pid))): \(reason)"
            }
        }
        #expect(restorer.refusals().map(\.description) == expected)
        if !expected.isEmpty {
            await #expect(throws: RestoreError.self) { _ = try await restorer.restore() }
            #expect(kill(pid, 0) == -1 && errno == ESRCH, "no process left at \(pid)")
            return
        }
        let chain = restorer.chain, manifest = restorer.manifest
        let result = try await restorer.restore(verify: { pid in
            let pages = try RestoreVerification.differingPages(pid: pid, chain: chain)
            guard pages.isEmpty else { throw RestoreFailure(description: "\(pages.count) pages differ") }
            let maps = try RestoreVerification.mappingDifferences(pid: pid, manifest: manifest)
            guard maps.isEmpty else { throw RestoreFailure(description: maps.joined(separator: "; ")) }
        })
        defer { endRestored(pid) }
        #expect(result.pid == pid)
        try await Task.sleep(for: .milliseconds(150))
        let answer = try await Self.ask(socket, "check")
        #expect(answer == "READY check=PASS", "\(answer)")
    }

    /// Connects to the scenario's command socket, sends one command and returns the answer line.
    static func ask(_ path: String, _ command: String) async throws -> String {
        try await Blocking.run("scenario-ask") {
            let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw RestoreFailure(description: "socket: \(errno)") }
            defer { close(fd) }
            var timeout = timeval(tv_sec: 20, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard connected == 0 else { throw RestoreFailure(description: "connect \(path): \(errno)") }
            let line = Array((command + "\n").utf8)
            guard send(fd, line, line.count, Int32(MSG_NOSIGNAL)) == line.count else { throw RestoreFailure(description: "send: \(errno)") }
            var answer: [UInt8] = []
            var byte: UInt8 = 0
            while recv(fd, &byte, 1, 0) == 1 {
                if byte == UInt8(ascii: "\n") { return String(decoding: answer, as: UTF8.self) }
                answer.append(byte)
            }
            throw RestoreFailure(description: "no answer to \(command): \(String(decoding: answer, as: UTF8.self))")
        }
    }
}
