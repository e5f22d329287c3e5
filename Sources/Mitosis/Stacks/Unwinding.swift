import CMitosisStacks

/// The frames of one thread as unwinding found them, before symbolization: cheap to take while
/// the process is frozen, symbolized after it runs again.
struct RawStack: Sendable {
    var tid: Int32
    /// The thread's name, read while it was frozen.
    var name: String
    /// Program counters, innermost first.
    var pcs: [UInt64]
    /// `exact[i]`: pcs[i] is the very instruction the thread will execute (the innermost frame,
    /// or one a signal interrupted), not a return address after a call.
    var exact: [Bool]
    /// Why the walk stopped early; nil when it reached the outermost frame.
    var truncated: String?
}

/// A libunwind-ptrace session over one frozen process: its unwind-table and register-state caches
/// and its memory page cache serve every thread. Used only on the tracer's thread.
final class UnwindSession {
    private let unwinder: OpaquePointer
    let pid: Int32
    let maxFrames: Int
    private var pcs: [UInt64]
    private var signalFrames: [UInt8]

    init(pid: Int32, maxFrames: Int) throws(MitosisError) {
        guard let unwinder = mitosis_unwinder_create(pid) else {
            throw .unsupported(feature: "libunwind-ptrace", detail: "could not create an address space for process \(pid)")
        }
        self.unwinder = unwinder
        self.pid = pid
        self.maxFrames = max(1, maxFrames)
        pcs = Array(repeating: 0, count: self.maxFrames)
        signalFrames = Array(repeating: 0, count: self.maxFrames)
    }

    deinit { mitosis_unwinder_destroy(unwinder) }

    /// Walks one thread's stack. The thread must be in a ptrace-stop held by the calling thread.
    /// Never fails: a stack that cannot be walked (corrupt, unreadable) yields the frames found.
    func unwind(_ tid: Int32) -> RawStack {
        var reason: Int32 = 0, error: Int32 = 0
        let count = Int(mitosis_unwind(unwinder, tid, &pcs, &signalFrames, Int32(maxFrames), &reason, &error))
        var exact = [Bool](repeating: false, count: count)
        for index in 0..<count { exact[index] = index == 0 || signalFrames[index - 1] != 0 }
        let truncated: String? = switch Int(reason) {
        case MITOSIS_UNWIND_END: nil
        case MITOSIS_UNWIND_MAX_FRAMES: "max_frames"
        case MITOSIS_UNWIND_LOOP: "loop"
        default: String(cString: mitosis_unwind_strerror(error))
        }
        let comm = (try? Kernel.readFile("/proc/\(pid)/task/\(tid)/comm")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return RawStack(tid: tid, name: comm.trimmingCharacters(in: "\n"), pcs: Array(pcs[0..<count]), exact: exact, truncated: truncated)
    }
}

extension Tracer {
    /// The largest number of frames a walk records by default.
    public static let defaultMaxFrames = 256

    /// Walks the stack of every frozen thread of `pid` (default: the frozen process).
    func unwindThreads(of pid: Int32? = nil, maxFrames: Int = Tracer.defaultMaxFrames) throws(MitosisError) -> [RawStack] {
        let process = pid ?? self.pid
        let session = try UnwindSession(pid: process, maxFrames: maxFrames)
        return threads(of: process).map(session.unwind)
    }

    /// The symbolized call stack of every frozen thread of `pid` (default: the frozen process),
    /// for recording next to `threadState(_:)`. Symbolization reads ELF files while the process
    /// stays frozen; to stop the target for less time use `ProcessStacks.capture(pid:)`, which
    /// symbolizes after the thaw.
    public func stacks(of pid: Int32? = nil, maxFrames: Int = Tracer.defaultMaxFrames) throws(MitosisError) -> [ThreadStack] {
        let process = pid ?? self.pid
        let raw = try unwindThreads(of: process, maxFrames: maxFrames)
        let symbolizer = try Symbolizer(pid: process)
        return raw.map(symbolizer.symbolize)
    }
}

extension ProcessStacks {
    /// Freezes `pid`, walks every thread's stack, thaws, then symbolizes: the target is stopped
    /// only for the walk. The memory map is read while frozen, so code unmapped right after the
    /// thaw is still attributed to its module.
    public static func capture(pid: Int32, maxFrames: Int = Tracer.defaultMaxFrames) async throws -> ProcessStacks {
        let (raw, maps) = try await withFrozenProcess(pid) { tracer in
            try await tracer.unwindWithMaps(maxFrames: maxFrames)
        }
        let symbolizer = Symbolizer(pid: pid, maps: maps)
        return ProcessStacks(pid: pid, threads: raw.map(symbolizer.symbolize))
    }
}

extension Tracer {
    /// The walk of every thread, and the memory map of the same instant.
    func unwindWithMaps(maxFrames: Int) throws(MitosisError) -> ([RawStack], [UInt8]) {
        let stacks = try unwindThreads(maxFrames: maxFrames)
        guard let maps = try? Kernel.readFile("/proc/\(pid)/maps") else { throw .noSuchProcess(pid) }
        return (stacks, maps)
    }
}
