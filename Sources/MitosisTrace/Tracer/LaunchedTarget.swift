import MitosisKernel
import MitosisModel

/// A target process started for Mitosis to work on (the demo, benchmarks): spawned by the one
/// launcher, `ChildProcess` (never Foundation's `Process`, whose monitor collects the ptrace stops
/// a freeze waits for), with pipes on its stdin and stdout, and ready once it prints a line
/// starting with `READY`. It exits when its stdin closes.
public final class LaunchedTarget: @unchecked Sendable {
    private let child: ChildProcess
    /// The READY line the target printed, without its newline.
    public let readyLine: String

    public var pid: Int32 { child.pid }

    /// Starts `executable ARGUMENTS…` and waits (at most `readyTimeout`) for its READY line.
    /// Blocks the calling thread while it waits.
    public init(executable: String, arguments: [String] = [], readyTimeout: Duration = .seconds(30)) throws(MitosisError) {
        do {
            child = try ChildProcess(executable: executable, arguments: arguments)
        } catch {
            throw .system(operation: "posix_spawn \(executable)", errno: error)
        }
        readyLine = child.readLine(timeout: readyTimeout) ?? ""
        guard readyLine.hasPrefix("READY") else {
            child.kill()
            throw .targetNotReady(executable: executable, output: readyLine)
        }
    }

    /// Writes one line to the target's stdin.
    public func send(_ line: String) throws(MitosisError) {
        do { try child.write(Array((line + "\n").utf8)) } catch { throw .system(operation: "write to \(pid)", errno: error) }
    }

    /// Reads the target's next line of output (nil at end of output or after `timeout`).
    public func readLine(timeout: Duration = .seconds(30)) -> String? { child.readLine(timeout: timeout) }

    /// Closes the target's stdin (its signal to exit) and reaps it.
    public func stop() {
        child.closeInput()
        child.wait()
    }

    /// Kills the target with SIGKILL and reaps it.
    public func kill() { child.kill() }
}
