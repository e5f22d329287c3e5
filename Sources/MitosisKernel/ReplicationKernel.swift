import CMitosis
import Glibc
import SystemPackage

/// What a standby needs beyond image writing: an exclusive lock on its directory (one standby
/// per directory, and `promote` waits for it), an atomic swap of two directories (compaction),
/// and whether a stream is a terminal (status lines).
extension Kernel {
    /// Takes an exclusive advisory lock on `fd`; with `wait` false, fails with EWOULDBLOCK when
    /// another open file description holds it. The lock ends when the last descriptor closes,
    /// so a process that dies releases it. The corresponding system call is `flock`.
    package static func lockExclusive(_ fd: FileDescriptor, wait: Bool) throws(Errno) {
        try check { flock(fd.rawValue, LOCK_EX | (wait ? 0 : LOCK_NB)) }
    }

    /// Swaps `first` and `second` (both relative to `directory`) in one step: a crash leaves
    /// either both names as they were or both swapped. The corresponding system call is
    /// `renameat2` with `RENAME_EXCHANGE`.
    package static func renameExchange(_ directory: FileDescriptor?, _ first: String, _ second: String) throws(Errno) {
        let dir = Int(directory?.rawValue ?? AT_FDCWD)
        let result = first.withCString { source in
            second.withCString { target in
                mitosis_syscall6(316 /* renameat2 */, dir, Int(bitPattern: source), dir, Int(bitPattern: target), 2 /* RENAME_EXCHANGE */, 0)
            }
        }
        if result == -1 { throw Errno(rawValue: errno) }
    }

    /// Renames `from` to `to` (both relative to `directory`), replacing a file at `to`.
    /// The corresponding system call is `renameat`.
    package static func rename(_ directory: FileDescriptor?, _ from: String, _ to: String) throws(Errno) {
        try check { renameat(directory?.rawValue ?? AT_FDCWD, from, directory?.rawValue ?? AT_FDCWD, to) }
    }

    /// SIGTERM and SIGKILL by name, so that callers above this layer need no libc.
    package static let terminateSignal = SIGTERM
    package static let killSignal = SIGKILL
}

extension OpenOptions {
    package static let readWrite = OpenOptions(rawValue: O_RDWR)
}
