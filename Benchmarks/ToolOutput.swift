import Foundation
import MitosisKernel

/// Runs a peer tool (lsof, ss, eu-stack, gdb) to completion and returns its standard output:
/// the benchmarks time Mitosis beside these tools in the same run.
enum ToolOutput {
    static func capture(_ tool: String, _ arguments: [String]) throws -> Data {
        let child = try ChildProcess(executable: tool, arguments: arguments, stdin: .null, stdout: .pipe, stderr: .null)
        let output = child.readToEnd().output
        child.wait()
        return Data(output)
    }
}
