import ArgumentParser
import Foundation
import Mitosis

/// Starts the bundled example target (`Examples/DemoTarget`), shows what Mitosis sees in it,
/// and stops it: the quickest way to see every part of Mitosis on a real process.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run Mitosis on the bundled demo target: inspect, graph, stacks, checkpoints.")

    @Option(help: "The demo target executable (default: mitosis-demo-target next to mitosis).")
    var target: String?

    func run() async throws {
        let executable = target ?? URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0])
            .deletingLastPathComponent().appendingPathComponent("mitosis-demo-target").path
        let demo: DemoTarget
        do { demo = try DemoTarget(executable: executable) } catch { fail(error) }
        defer { demo.stop() }
        do {
            try await show(pid: demo.pid)
        } catch {
            fail(error)
        }
    }

    private func show(pid: Int32) async throws {
        heading("inspect \(pid): what /proc tells, without stopping it")
        print(InspectReport(try Introspector.inspect(pid: pid)).text)

        heading("graph \(pid): resources and how they depend on each other")
        let graph = try await ResourceGraph.snapshot(of: pid, options: GraphOptions(includeMappings: false), freeze: false)
        print(graph.text())
        let closure = graph.closure(of: pid)
        print("dependency closure: \(closure.processes.count) process(es), \(closure.resources.count) resources to capture, \(closure.external.count) external:")
        for resource in closure.external { print("  \(resource.id): \(resource.reason)") }
        print()

        heading("stacks \(pid): every thread, frozen for a moment")
        let clock = ContinuousClock()
        let start = clock.now
        let stacks = try await ProcessStacks.capture(pid: pid)
        let elapsed = clock.now - start
        print(stacks.text())
        print("(\(stacks.threads.count) threads unwound in \(elapsed.formatted(.units(allowed: [.milliseconds], fractionalPart: .show(length: 1)))), target thawed)\n")

        heading("checkpoints \(pid): a full one, then only the pages written since")
        let images = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-demo-\(pid)").path
        defer { try? FileManager.default.removeItem(atPath: images) }
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        let session = try await CheckpointSession(pid: pid)
        do {
            for number in 1...2 {
                if number > 1 { try await Task.sleep(for: .milliseconds(300)) }
                let sink = DirectorySink(directory: "\(images)/\(number)")
                let result = try await session.checkpoint(to: sink, parent: number == 1 ? nil : .previous(path: "../1"))
                print(CheckpointSummary(result, path: sink.path).text)
            }
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        print()

        heading("after: the target runs on, untraced")
        let after = try Introspector.inspect(pid: pid, detailedMemory: false)
        print("process \(pid): state \(after.identity.state), \(after.threads.count) threads, \(after.fds.count) descriptors")
    }

    private func heading(_ text: String) {
        print("== \(text)")
    }
}

/// The demo target process: started with a pipe on its stdin, it prints `READY pid=…` once its
/// state is built and exits when that pipe closes. Spawned with `posix_spawn`, not Foundation's
/// `Process`, whose reaper would collect the ptrace stops Mitosis waits for.
final class DemoTarget {
    let pid: Int32
    private let input: Int32
    private let output: Int32

    init(executable: String) throws {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw ValidationError("demo target not found at \(executable) (build it with `swift build`)")
        }
        var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw ValidationError("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        posix_spawn_file_actions_addclose(&actions, toChild[1])
        posix_spawn_file_actions_addclose(&actions, fromChild[0])
        let argv = [strdup(executable), nil]
        defer { free(argv[0]) }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, nil, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else { throw ValidationError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        pid = child
        input = toChild[1]
        output = fromChild[0]
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while byte != UInt8(ascii: "\n") {
            guard read(output, &byte, 1) == 1 else {
                stop()
                throw ValidationError("demo target exited before it was ready")
            }
            line.append(byte)
        }
        guard String(decoding: line, as: UTF8.self).hasPrefix("READY") else {
            stop()
            throw ValidationError("demo target did not start: \(String(decoding: line, as: UTF8.self))")
        }
    }

    /// Closes the target's stdin (its signal to exit) and reaps it.
    func stop() {
        close(input)
        close(output)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }
}
