import CMitosis
import MitosisModel
import Glibc
import SystemPackage

extension Kernel {
    /// Creates a husk with exactly `pid`: a child that does nothing but wait, for a restore to
    /// fill (see `mitosis_husk_spawn`). Call it from the thread that will trace the husk: the
    /// husk dies when that thread exits. `EEXIST`: the pid is taken; `EINVAL`: above `pid_max`;
    /// `HuskPlacement.Failure`: a namespace step of `placement` failed. Returns the offsets of
    /// its time namespace, if it has one of its own.
    /// The corresponding system call is `clone3` with `set_tid`.
    package static func spawnHusk(pid: Int32, placement: HuskPlacement = HuskPlacement()) throws -> (husk: Int32, offsets: TimeNamespaceOffsets?) {
        let (husk, offsets) = try spawn(placement) { () throws(Errno) in try check { mitosis_husk_spawn(pid) } }
        return (husk, offsets)
    }

    /// Creates a husk with pid `pid` inside a new pid namespace, the child of a small init
    /// (pid 1 there) that this thread creates (see `mitosis_husk_spawn_pidns`). Returns the
    /// husk's and the init's pids as this process sees them and the init's control pipe: closing
    /// it lets the init reap what is left and exit when its last child does.
    /// The corresponding system calls are `unshare(CLONE_NEWPID)`, `clone3` with `set_tid`, `setns`.
    package static func spawnHuskInNewPidNamespace(pid: Int32, placement: HuskPlacement = HuskPlacement()) throws
        -> (husk: Int32, initPid: Int32, control: FileDescriptor, offsets: TimeNamespaceOffsets?) {
        var initPid: Int32 = 0, control: Int32 = -1
        let (husk, offsets) = try spawn(placement) { () throws(Errno) in try check { mitosis_husk_spawn_pidns(pid, &initPid, &control) } }
        return (husk, initPid, FileDescriptor(rawValue: control), offsets)
    }

    /// The robust futex list head of thread `tid` and its length.
    /// The corresponding system call is `get_robust_list`.
    package static func robustList(_ tid: Int32) throws(Errno) -> (head: UInt64, length: UInt64) {
        var head: UInt64 = 0, length: UInt64 = 0
        try check { mitosis_get_robust_list(tid, &head, &length) }
        return (head, length)
    }

    /// The unread bytes of the pipe behind `/proc/PID/fd/N`, left unread, and its capacity.
    /// The corresponding system call is `tee`.
    package static func peekPipe(pid: Int32, fd: Int32) throws(Errno) -> (bytes: [UInt8], capacity: Int) {
        var size: Int32 = 0
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        let count = try check { bytes.withUnsafeMutableBytes { mitosis_pipe_peek("/proc/\(procEntry(pid))/fd/\(fd)", $0.baseAddress, UInt($0.count), &size) } }
        return (Array(bytes[..<count]), Int(size))
    }

    /// Sets a resource limit of another process (`RLIMIT_*` number; nil is unlimited).
    /// The corresponding system call is `prlimit64`.
    package static func setResourceLimit(pid: Int32, resource: Int32, soft: UInt64?, hard: UInt64?) throws(Errno) {
        var limits: (UInt64, UInt64) = (soft ?? UInt64.max, hard ?? UInt64.max)
        try check { withUnsafeMutablePointer(to: &limits) { mitosis_syscall6(302 /* prlimit64 */, Int(pid), Int(resource), Int(bitPattern: $0), 0, 0, 0) } }
    }

    /// Registers a range of this process for missing-page faults on `uffd`, then fills it from
    /// `source`: how fast fresh memory can be filled at best (restore's floor).
    /// The corresponding ioctls are `UFFDIO_REGISTER` and `UFFDIO_COPY`.
    package static func fillByUserfaultfd(_ uffd: FileDescriptor, address: UInt64, from source: UnsafeRawBufferPointer) throws(Errno) {
        try check { mitosis_uffdio_register_missing(uffd.rawValue, address, UInt64(source.count)) }
        try check { mitosis_uffdio_copy_all(uffd.rawValue, address, source.baseAddress, UInt64(source.count)) }
    }

    /// The effective user and group ids of this process. The corresponding C functions are `geteuid`, `getegid`.
    package static var effectiveUserID: UInt32 { geteuid() }
    package static var effectiveGroupID: UInt32 { getegid() }

    /// Whether two byte ranges hold the same bytes (fast even in a debug build, where comparing
    /// 1 GiB element by element takes minutes). The corresponding C function is `memcmp`.
    package static func bytesEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
    }

    /// XCR0: the XSAVE state components this CPU and kernel enable. The instruction is `xgetbv`.
    package static var enabledXsaveFeatures: UInt64 { mitosis_xcr0() }

    /// Sends `signal` to a process. The corresponding system call is `kill`.
    package static func sendSignal(pid: Int32, _ signal: Int32) throws(Errno) {
        try check { Glibc.kill(pid, signal) }
    }

    /// Reaps an exited child (blocking). The corresponding system call is `waitpid` with `__WALL`.
    package static func reap(_ pid: Int32) {
        var status: Int32 = 0
        while waitpid(pid, &status, MITOSIS_WALL) == -1 && errno == EINTR {}
    }
}

extension Ptrace {
    /// Sets ptrace options (`PTRACE_O_*`). The corresponding request is `PTRACE_SETOPTIONS`.
    package static func setOptions(_ tid: Int32, _ options: Int) throws(Errno) {
        try Kernel.check { mitosis_ptrace(Int32(PTRACE_SETOPTIONS.rawValue), tid, nil, UnsafeMutableRawPointer(bitPattern: options)) }
    }

    /// Writes a register set (`NT_X86_XSTATE`…) from `buffer`.
    /// The corresponding request is `PTRACE_SETREGSET`.
    package static func setRegisterSet(_ tid: Int32, kind: Int32, from buffer: UnsafeRawBufferPointer) throws(Errno) {
        var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: buffer.baseAddress), iov_len: buffer.count)
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_SETREGSET, tid, UnsafeMutableRawPointer(bitPattern: Int(kind)), &vector) }
    }

    /// Sets the blocked-signal mask. The corresponding request is `PTRACE_SETSIGMASK`.
    package static func setSignalMask(_ tid: Int32, _ mask: UInt64) throws(Errno) {
        var copy = mask
        try Kernel.check { mitosis_ptrace(MITOSIS_PTRACE_SETSIGMASK, tid, UnsafeMutableRawPointer(bitPattern: 8), &copy) }
    }
}

extension Ptrace {
    /// Sets the general-purpose registers, `fs_base` and `gs_base` included.
    /// The corresponding request is `PTRACE_SETREGS`.
    package static func setRegisters(_ tid: Int32, _ r: GeneralRegisters) throws(Errno) {
        try setRegisters(tid, user_regs_struct(r))
    }

    /// The `PTRACE_GETREGSET`/`SETREGSET` kind of the XSAVE area.
    package static let extendedStateKind = MITOSIS_NT_X86_XSTATE
}

/// The kernel's `struct clone_args` for `clone3`, as bytes to write into a process.
package struct CloneArguments {
    package var flags: UInt64
    /// Address of the `pid_t` array of wanted ids, and its length.
    package var setTid: UInt64
    package var setTidSize: UInt64

    package init(flags: UInt64, setTid: UInt64, setTidSize: UInt64) {
        self.flags = flags
        self.setTid = setTid
        self.setTidSize = setTidSize
    }

    package static var size: Int { MemoryLayout<mitosis_clone_args>.size }

    package var bytes: [UInt8] {
        let args = mitosis_clone_args(flags: flags, pidfd: 0, child_tid: 0, parent_tid: 0, exit_signal: 0, stack: 0,
                                      stack_size: 0, tls: 0, set_tid: setTid, set_tid_size: setTidSize)
        return withUnsafeBytes(of: args) { Array($0) }
    }
}

/// The kernel's `struct prctl_mm_map` for `PR_SET_MM_MAP`, as bytes to write into a process.
package struct MmMap {
    package var startCode, endCode, startData, endData, startBrk, brk, startStack: UInt64
    package var argStart, argEnd, envStart, envEnd: UInt64
    /// Address of the auxiliary vector in the process, and its size in bytes.
    package var auxv: UInt64
    package var auxvSize: UInt32
    package var exeFd: UInt32

    package init(startCode: UInt64, endCode: UInt64, startData: UInt64, endData: UInt64, startBrk: UInt64, brk: UInt64,
                 startStack: UInt64, argStart: UInt64, argEnd: UInt64, envStart: UInt64, envEnd: UInt64,
                 auxv: UInt64, auxvSize: UInt32, exeFd: UInt32) {
        (self.startCode, self.endCode, self.startData, self.endData) = (startCode, endCode, startData, endData)
        (self.startBrk, self.brk, self.startStack) = (startBrk, brk, startStack)
        (self.argStart, self.argEnd, self.envStart, self.envEnd) = (argStart, argEnd, envStart, envEnd)
        (self.auxv, self.auxvSize, self.exeFd) = (auxv, auxvSize, exeFd)
    }

    package static var size: Int { MemoryLayout<mitosis_prctl_mm_map>.size }

    package var bytes: [UInt8] {
        let map = mitosis_prctl_mm_map(
            start_code: startCode, end_code: endCode, start_data: startData, end_data: endData,
            start_brk: startBrk, brk: brk, start_stack: startStack, arg_start: argStart, arg_end: argEnd,
            env_start: envStart, env_end: envEnd, auxv: auxv, auxv_size: auxvSize, exe_fd: exeFd)
        return withUnsafeBytes(of: map) { Array($0) }
    }
}
