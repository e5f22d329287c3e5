import MitosisKernel
import MitosisModel
import SystemPackage

/// The process an operation works on, validated once and pinned for as long as the value lives:
/// its pid, a pidfd and its open `/proc/PID` directory. Every read of the target's `/proc` files
/// goes through the directory, so a session that runs for hours never reads, signals or
/// checkpoints a process that merely inherited the target's pid.
public struct TargetProcess: Sendable {
    package let process: ProcessDirectory

    public var pid: Int32 { process.pid }

    /// Opens `pid` and checks that it is a live user-space process other than Mitosis itself.
    /// - Parameter forTracing: also refuse a process that another tracer holds.
    public init(pid: Int32, forTracing: Bool = false) throws(MitosisError) {
        guard pid > 0 else { throw .invalidPID(String(pid)) }
        if pid == Kernel.currentProcessID() { throw .isSelf(pid) }
        do {
            process = try ProcessDirectory(pid: pid)
        } catch .permissionDenied, .notPermitted {
            throw .permissionDenied(pid, operation: "open")
        } catch {
            throw .noSuchProcess(pid)
        }
        guard let stat = ProcStat(parsing: try text("stat")) else { throw .noSuchProcess(pid) }
        // /proc/PID also resolves thread ids that are not thread-group leaders; those are not processes.
        if let statusText = try? text("status") {
            let status = ProcStatus(parsing: statusText)
            if let tgid = status["Tgid"].flatMap({ Int32($0) }), tgid != pid { throw .noSuchProcess(pid) }
            if forTracing, status.tracerPID != 0, !Self.isOwnThread(status.tracerPID) {
                throw .alreadyTraced(pid, tracer: status.tracerPID)
            }
        }
        if stat.isKernelThread { throw .kernelThread(pid) }
        if stat.state == "Z" || stat.state == "X" { throw .zombie(pid) }
    }

    /// Mitosis itself, for reading what it holds on a target's behalf (the descriptors in flight
    /// a peek of the target's unix queues installed here).
    package static func mitosis() throws(MitosisError) -> TargetProcess {
        let pid = Kernel.currentProcessID()
        do { return TargetProcess(directory: try ProcessDirectory(pid: pid)) } catch { throw .noSuchProcess(pid) }
    }

    private init(directory: ProcessDirectory) {
        process = directory
    }

    /// Throws unless the process this value was opened for still runs: `.targetExited` once it
    /// has exited, `.pidReused` when its pid now names another process.
    public func requireAlive() throws(MitosisError) {
        guard process.hasExited else { return }
        throw exited
    }

    /// How the exit of the process is reported: `.pidReused` when its pid already names
    /// another process, else `.targetExited`.
    private var exited: MitosisError {
        (try? Kernel.status("/proc/\(pid)")) != nil ? .pidReused(pid) : .targetExited(pid)
    }

    /// The text of `/proc/PID/<name>`.
    package func text(_ name: String) throws(MitosisError) -> String {
        String(decoding: try bytes(name), as: UTF8.self)
    }

    /// The bytes of `/proc/PID/<name>`.
    package func bytes(_ name: String) throws(MitosisError) -> [UInt8] {
        do { return try process.read(name) } catch { throw failure(error, reading: name) }
    }

    /// The target of the link `/proc/PID/<name>`.
    package func readLink(_ name: String) throws(MitosisError) -> String {
        do { return try process.readLink(name) } catch { throw failure(error, reading: name) }
    }

    /// The names in `/proc/PID/<name>`.
    package func list(_ name: String) throws(MitosisError) -> [String] {
        do { return try process.list(name) } catch { throw failure(error, reading: name) }
    }

    /// Opens the directory `/proc/PID/<name>`.
    package func openDirectory(_ name: String) throws(MitosisError) -> FileDescriptor {
        do { return try process.openDirectory(name) } catch { throw failure(error, reading: name) }
    }

    /// Translates an errno from reading `/proc/PID/<name>` into the error a user can act on.
    package func failure(_ error: Errno, reading name: String) -> MitosisError {
        if error == .noSuchFileOrDirectory || error == .noSuchProcess, process.hasExited { return exited }
        return Self.failure(error, pid: pid, reading: "/proc/\(pid)/\(name)")
    }

    /// Translates an errno from reading `path`, a file about `pid` (a process found earlier), into
    /// the error a user can act on.
    package static func failure(_ error: Errno, pid: Int32, reading path: String) -> MitosisError {
        switch error {
        case .noSuchFileOrDirectory, .noSuchProcess: return .targetExited(pid)
        case .permissionDenied, .notPermitted: return .permissionDenied(pid, operation: "read \(path) of")
        default: return .system(operation: "reading \(path)", errno: error)
        }
    }

    private static func isOwnThread(_ tid: Int32) -> Bool {
        (try? Kernel.readFile("/proc/self/task/\(tid)/stat")) != nil
    }
}
