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

/// One program run to completion with its output discarded, timed: Mitosis's own CLI and its
/// peers (lsof, ss) are measured the same way, process start included.
struct TimedRun {
    var wall: Duration
    /// User plus system time of the child: steadier than wall time on a loaded machine.
    var cpu: Duration

    static func run(_ executable: String, _ arguments: [String]) throws -> TimedRun {
        let clock = ContinuousClock()
        let cpuBefore = ChildProcess.reapedChildrenCPUTime()
        let start = clock.now
        try ChildProcess(executable: executable, arguments: arguments, stdin: .null, stdout: .null, stderr: .null).wait()
        let wall = clock.now - start
        return TimedRun(wall: wall, cpu: ChildProcess.reapedChildrenCPUTime() - cpuBefore)
    }

    /// Instructions the program executes under valgrind's callgrind (`Collected :` of its
    /// summary): the same count on a busy machine and an idle one. nil without valgrind.
    static func instructions(_ executable: String, _ arguments: [String]) throws -> UInt64? {
        guard let valgrind = ["/usr/bin/valgrind", "/usr/local/bin/valgrind"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else { return nil }
        let child = try ChildProcess(executable: valgrind, arguments: ["--tool=callgrind", "--callgrind-out-file=/dev/null", executable] + arguments,
                                     stdin: .null, stdout: .null, stderr: .pipe)
        let errorOutput = String(decoding: child.readToEnd().errorOutput, as: UTF8.self)
        child.wait()
        guard let line = errorOutput.split(separator: "\n").first(where: { $0.contains("Collected :") }),
              let count = line.split(separator: " ").last.flatMap({ UInt64($0) })
        else { return nil }
        return count
    }
}

/// Medians of interleaved samples, and the lines the benchmarks print about them.
struct Samples {
    private(set) var wall: [String: [Duration]] = [:]
    private(set) var cpu: [String: [Duration]] = [:]

    mutating func add(_ name: String, _ run: TimedRun) {
        wall[name, default: []].append(run.wall)
        cpu[name, default: []].append(run.cpu)
    }

    mutating func add(_ name: String, wall duration: Duration) { wall[name, default: []].append(duration) }

    func median(_ name: String, cpu useCPU: Bool = false) -> Double {
        let sorted = ((useCPU ? cpu : wall)[name] ?? []).sorted()
        return sorted.isEmpty ? .nan : sorted[sorted.count / 2].inMilliseconds
    }

    func line(_ name: String) -> String {
        let sorted = (wall[name] ?? []).sorted()
        guard !sorted.isEmpty else { return name }
        var text = String(format: "%@ wall median %8.1f ms (min %.1f, max %.1f)", name.padding(toLength: 34, withPad: " ", startingAt: 0),
                          median(name), sorted[0].inMilliseconds, sorted[sorted.count - 1].inMilliseconds)
        if cpu[name] != nil { text += String(format: ", cpu median %7.1f ms", median(name, cpu: true)) }
        return text
    }
}

/// A binary next to the running benchmark (`mitosis`, `mitosis-scenario`).
func siblingExecutable(_ name: String) -> String {
    URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent(name).path
}
