@testable import MitosisKernel

/// One run of a built executable (the `mitosis` CLI, usually), with its output collected.
///
/// The waiting happens on a thread of its own (`Blocking.run`): a test that blocked a
/// cooperative thread here could starve the tests that would let the tool finish.
struct ToolRun {
    /// The exit code, or 128 + the signal that killed the tool.
    let status: Int32
    let standardOutput: String
    let standardError: String

    /// Runs `executable arguments…` to completion. `prefix` (e.g. `setpriv …`) runs it through
    /// another program.
    init(_ executable: String, _ arguments: [String], prefix: [String] = []) async throws {
        let child = try ToolRun.start(executable, arguments, prefix: prefix)
        let (output, errorOutput, status) = try await Blocking.run("tool-run") {
            let (output, errorOutput) = child.readToEnd()
            return (output, errorOutput, child.wait())
        }
        self.status = ChildProcess.exitCode(of: status)
        standardOutput = String(decoding: output, as: UTF8.self)
        standardError = String(decoding: errorOutput, as: UTF8.self)
    }

    /// Starts `executable arguments…` without waiting; stdin is /dev/null, stdout and stderr pipes.
    static func start(_ executable: String, _ arguments: [String], prefix: [String] = []) throws -> ChildProcess {
        let command = prefix + [executable] + arguments
        return try ChildProcess(executable: command[0], arguments: Array(command.dropFirst()),
                                stdin: .null, stdout: .pipe, stderr: .pipe)
    }

    /// The `mitosis` CLI built next to the tests.
    static let mitosis = ScenarioProcess.executable("mitosis")
}
