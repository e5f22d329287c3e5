import Foundation

/// One run of a built executable (the `mitosis` CLI, usually), with its output collected.
struct ToolRun {
    let status: Int32
    let standardOutput: String
    let standardError: String

    /// Runs `executable arguments…` to completion. `prefix` (e.g. `setpriv …`) runs it through
    /// another program.
    init(_ executable: String, _ arguments: [String], prefix: [String] = []) throws {
        let process = try ToolRun.start(executable, arguments, prefix: prefix)
        let output = process.standardOutput as! Pipe, error = process.standardError as! Pipe
        let outData = output.fileHandleForReading.readDataToEndOfFile()
        let errData = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        status = process.terminationStatus
        standardOutput = String(decoding: outData, as: UTF8.self)
        standardError = String(decoding: errData, as: UTF8.self)
    }

    /// Starts `executable arguments…` without waiting; stdout and stderr are pipes.
    static func start(_ executable: String, _ arguments: [String], prefix: [String] = []) throws -> Process {
        let process = Process()
        let command = prefix + [executable] + arguments
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = Pipe()
        process.standardError = Pipe()
        try process.run()
        return process
    }

    /// The `mitosis` CLI built next to the tests.
    static let mitosis = ScenarioProcess.executable("mitosis")
}
