import Foundation

/// Runs a peer tool (lsof, ss, eu-stack, gdb) to completion and returns its standard output:
/// the benchmarks time Mitosis beside these tools in the same run.
enum ToolOutput {
    static func capture(_ tool: String, _ arguments: [String]) throws -> Data {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return data
    }
}
