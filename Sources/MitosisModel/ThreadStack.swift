/// The call stacks of a process's threads, as `mitosis stacks --json` prints them.
public struct ProcessStacks: Equatable, Sendable, Codable {
    public var pid: Int32
    /// Ascending tid.
    public var threads: [ThreadStack]

    public init(pid: Int32, threads: [ThreadStack]) {
        self.pid = pid
        self.threads = threads
    }
}

/// One thread's call stack, innermost frame first.
public struct ThreadStack: Equatable, Sendable, Codable {
    public var tid: Int32
    /// The thread's name (`/proc/PID/task/TID/comm`).
    public var name: String
    public var frames: [StackFrame]
    /// Why the walk stopped short of the outermost frame (`max_frames`, `loop`, or libunwind's
    /// error text); nil when it reached the end of the stack.
    public var truncated: String?

    public init(tid: Int32, name: String, frames: [StackFrame], truncated: String?) {
        self.tid = tid
        self.name = name
        self.frames = frames
        self.truncated = truncated
    }
}

/// One frame: where the thread will return to (or, for the innermost frame and a frame a signal
/// interrupted, the exact instruction), and what code that is.
public struct StackFrame: Equatable, Hashable, Sendable, Codable {
    /// The program counter in the target's address space.
    public var pc: UInt64
    /// The function, demangled (C++ and Swift); nil when no symbol covers `pc`.
    public var function: String?
    /// `pc - function start` when `function` is known; otherwise `pc`'s address in the module's
    /// own ELF address space (what `addr2line -e module` takes) — its file offset if the file
    /// could not be read — or `pc` itself with no module.
    public var offset: UInt64
    /// The mapped file (`/usr/lib/x86_64-linux-gnu/libc.so.6`, `[vdso]`); nil for anonymous memory.
    public var module: String?
    /// The module's GNU build-id in hex, when it has one.
    public var buildId: String?

    public init(pc: UInt64, function: String?, offset: UInt64, module: String?, buildId: String?) {
        self.pc = pc
        self.function = function
        self.offset = offset
        self.module = module
        self.buildId = buildId
    }
}
