import CMitosis
import Glibc
import MitosisModel

/// A target process started for Mitosis to work on: spawned with `posix_spawn`, pipes on its
/// stdin and stdout, and ready once it prints a line starting with `READY`.
///
/// Foundation's `Process` is no substitute: its child monitor calls `waitpid` on the children it
/// launched and so collects the ptrace stops a freeze waits for.
public final class LaunchedTarget: @unchecked Sendable {
    public let pid: Int32
    /// The READY line the target printed, without its newline.
    public let readyLine: String
    private let input: Int32
    private let output: Int32
    private var reaped = false

    /// Starts `executable ARGUMENTS…` and waits for its READY line.
    public init(executable: String, arguments: [String] = []) throws(MitosisError) {
        var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
        guard mitosis_pipe_cloexec(&toChild) == 0 else { throw .system(operation: "pipe2", errno: .init(rawValue: errno)) }
        guard mitosis_pipe_cloexec(&fromChild) == 0 else {
            close(toChild[0]); close(toChild[1])
            throw .system(operation: "pipe2", errno: .init(rawValue: errno))
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, nil, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1]); close(fromChild[0])
            throw .system(operation: "posix_spawn \(executable)", errno: .init(rawValue: rc))
        }
        pid = child
        input = toChild[1]
        output = fromChild[0]
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while byte != UInt8(ascii: "\n") {
            guard read(output, &byte, 1) == 1 else { break }
            if byte != UInt8(ascii: "\n") { line.append(byte) }
        }
        readyLine = String(decoding: line, as: UTF8.self)
        guard readyLine.hasPrefix("READY") else {
            kill()
            throw .targetNotReady(executable: executable, output: readyLine)
        }
    }

    /// Closes the target's stdin (its signal to exit) and reaps it.
    public func stop() { finish(signal: nil) }

    /// Kills the target with SIGKILL and reaps it.
    public func kill() { finish(signal: SIGKILL) }

    private func finish(signal: Int32?) {
        guard !reaped else { return }
        reaped = true
        if let signal { Glibc.kill(pid, signal) }
        close(input)
        close(output)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }

    deinit { kill() }
}
