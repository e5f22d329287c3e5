/// `/proc/PID/stat` and `/proc/PID/task/TID/stat`: one line of space-separated fields whose
/// second field, the command name in parentheses, may itself hold spaces and parentheses.
public struct ProcStat: Equatable, Sendable {
    public var pid: Int32
    public var comm: String
    /// The one-letter scheduler state: R, S, D, T, t, Z, X, I…
    public var state: Character
    public var ppid: Int32
    public var processGroup: Int32
    public var session: Int32
    public var ttyNumber: Int32
    /// Kernel `PF_*` flags of the task.
    public var flags: UInt64
    public var threadCount: Int
    /// Start time in clock ticks since boot.
    public var startTime: UInt64

    /// Fields 26–28 and 45–51, where the kernel placed code, stack, data, the heap's start,
    /// arguments and environment; nil when the line stops before them.
    public var layout: Layout?

    public struct Layout: Equatable, Sendable {
        public var startCode, endCode, startStack: UInt64
        public var startData, endData, startBrk: UInt64
        public var argStart, argEnd, envStart, envEnd: UInt64
    }

    /// `PF_KTHREAD`: the task is a kernel thread.
    public var isKernelThread: Bool { flags & 0x0020_0000 != 0 }

    /// Parses the file's text; nil when it is truncated or malformed.
    public init?(parsing text: String) {
        // The comm ends at the *last* ')', since a comm may contain ") " itself.
        guard let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")"), open < close,
              let pid = Int32(text[..<open].trimmingCharacters(in: " "))
        else { return nil }
        let rest = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // rest[0] is field 3 (state); field N is rest[N - 3].
        guard rest.count >= 20, let state = rest[0].first,
              let ppid = Int32(rest[1]), let pgrp = Int32(rest[2]), let session = Int32(rest[3]),
              let tty = Int32(rest[4]), let flags = UInt64(rest[6]),
              let threads = Int(rest[17]), let start = UInt64(rest[19].trimmingCharacters(in: "\n"))
        else { return nil }
        self.pid = pid
        self.comm = String(text[text.index(after: open)..<close])
        self.state = state
        self.ppid = ppid
        self.processGroup = pgrp
        self.session = session
        self.ttyNumber = tty
        self.flags = flags
        self.threadCount = threads
        self.startTime = start
        func field(_ n: Int) -> UInt64? { rest.count > n - 3 ? UInt64(rest[n - 3].trimmingCharacters(in: "\n")) : nil }
        if let startCode = field(26), let endCode = field(27), let startStack = field(28),
           let startData = field(45), let endData = field(46), let startBrk = field(47),
           let argStart = field(48), let argEnd = field(49), let envStart = field(50), let envEnd = field(51) {
            layout = Layout(startCode: startCode, endCode: endCode, startStack: startStack, startData: startData,
                            endData: endData, startBrk: startBrk, argStart: argStart, argEnd: argEnd,
                            envStart: envStart, envEnd: envEnd)
        }
    }
}

extension StringProtocol {
    /// Trims the given characters from both ends (Foundation-free, for the parsers).
    package func trimmingCharacters(in set: String) -> String {
        var slice = Substring(self)
        while let first = slice.first, set.contains(first) { slice.removeFirst() }
        while let last = slice.last, set.contains(last) { slice.removeLast() }
        return String(slice)
    }
}
