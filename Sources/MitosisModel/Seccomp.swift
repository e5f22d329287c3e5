/// A process's seccomp state, as a restore puts it back: what its threads run under.
public struct SeccompState: Codable, Sendable, Equatable {
    /// `Seccomp:` of `/proc/PID/status`: 1 strict, 2 filter (0, none, is not recorded).
    public var mode: Int32
    /// In filter mode, every filter, oldest first (the order they were installed in).
    public var filters: [SeccompFilter]

    public init(mode: Int32, filters: [SeccompFilter]) {
        self.mode = mode
        self.filters = filters
    }
}

/// One installed seccomp filter.
public struct SeccompFilter: Codable, Sendable, Equatable {
    /// The flags it was installed with, as the kernel reports them (`SECCOMP_FILTER_FLAG_LOG`).
    public var flags: UInt64
    /// Its classic BPF program: 8-byte `struct sock_filter` instructions.
    public var program: [UInt64]

    public init(flags: UInt64, program: [UInt64]) {
        self.flags = flags
        self.program = program
    }
}
