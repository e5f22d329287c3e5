import CMitosis
import Glibc
import SystemPackage

/// The one layer that talks to the kernel. Every raw system call Mitosis makes goes through
/// `Kernel`, so a reader always knows which interface sits underneath; everything above works
/// with typed values and `Errno`.
package enum Kernel {
    /// The calling OS thread's kernel id. The corresponding C function is `gettid`.
    package static func currentThreadID() -> Int32 { mitosis_gettid() }

    /// This process's parent's id. The corresponding C function is `getppid`.
    package static func parentProcessID() -> Int32 { getppid() }

    /// Writes `bytes` to standard error at once, unbuffered (a line a test reads while this
    /// process is paused). The corresponding system call is `write`.
    package static func writeStandardError(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// This process's id. The corresponding C function is `getpid`.
    package static func currentProcessID() -> Int32 { getpid() }

    /// Whether a process (or thread) with this id exists in this pid namespace.
    /// The corresponding system call is `kill(pid, 0)`.
    package static func processExists(_ pid: Int32) -> Bool {
        pid > 0 && (Glibc.kill(pid, 0) == 0 || errno == EPERM)
    }

    /// Runs a call that reports failure as -1 + errno, retrying on EINTR.
    @discardableResult
    package static func check<T: BinaryInteger>(_ call: () -> T) throws(Errno) -> T {
        while true {
            let result = call()
            if result != -1 { return result }
            let error = Errno(rawValue: errno)
            if error != .interrupted { throw error }
        }
    }

    /// Opens a pidfd for `pid`. The corresponding system call is `pidfd_open`.
    package static func pidfdOpen(_ pid: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try check { mitosis_pidfd_open(pid, 0) })
    }

    /// A pidfd for the task `tid` of process `pid`: the process's own when `tid` is its leader,
    /// else one for that thread (`PIDFD_THREAD`, Linux 6.9): `pidfd_getfd` through it reaches the
    /// descriptors even when the leader has exited.
    package static func pidfdOpen(_ pid: Int32, task tid: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try check { mitosis_pidfd_open(tid, tid == pid ? 0 : UInt32(O_EXCL)) })
    }

    /// A pidfd through which `pidfd_getfd` reaches `pid`'s descriptors. When the main thread has
    /// exited, its task has no descriptor table and `pidfd_getfd` fails with ESRCH: the pidfd
    /// then names a live thread (`PIDFD_THREAD`, Linux 6.9+). The corresponding system call is
    /// `pidfd_open`.
    package static func pidfdOpen(descriptorsOf pid: Int32) throws(Errno) -> FileDescriptor {
        let entry = procEntry(pid)
        if entry == pid { return try pidfdOpen(pid) }
        return FileDescriptor(rawValue: try check { mitosis_pidfd_open(entry, UInt32(O_EXCL) /* PIDFD_THREAD */) })
    }

    /// Duplicates `targetFD` of the process behind `pidfd` into this process: the same open file
    /// description, so reading through it moves the target's offset.
    /// The corresponding system call is `pidfd_getfd`.
    package static func pidfdGetfd(_ pidfd: FileDescriptor, _ targetFD: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try check { mitosis_pidfd_getfd(pidfd.rawValue, targetFD, 0) })
    }

    /// Which kernel objects two processes share. The corresponding system call is `kcmp`.
    package enum KcmpKind: Int32, Sendable {
        case file = 0, addressSpace = 1, fileTable = 2, fsInfo = 3, signalHandlers = 4, io = 5, sysvSemUndo = 6
    }

    /// Whether two processes refer to the same kernel object of `kind`
    /// (for `.file`, `index1`/`index2` are fd numbers). The corresponding system call is `kcmp`.
    package static func kcmpEqual(_ pid1: Int32, _ pid2: Int32, _ kind: KcmpKind,
                                 _ index1: Int = 0, _ index2: Int = 0) throws(Errno) -> Bool {
        try check { mitosis_kcmp(pid1, pid2, kind.rawValue, UInt(index1), UInt(index2)) } == 0
    }

    /// Reads `count` bytes at `address` in `pid`'s memory. Short reads (a range crossing an
    /// unmapped page) return what was read. The corresponding system call is `process_vm_readv`.
    /// A process whose main thread has exited is read through a live thread (see `procEntry`).
    package static func readMemory(pid: Int32, address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try throughLiveThread(pid) { pid in mitosis_process_vm_read(pid, buffer.baseAddress, buffer.count, address) }
    }

    /// Writes `buffer` at `address` in `pid`'s memory. The corresponding system call is `process_vm_writev`.
    package static func writeMemory(pid: Int32, address: UInt64, from buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        try throughLiveThread(pid) { pid in mitosis_process_vm_write(pid, buffer.baseAddress, buffer.count, address) }
    }

    /// Runs a call that names a process by `pid`; when it fails with ESRCH because the main thread
    /// has exited (its task has no address space left), once more with a live thread's id.
    private static func throughLiveThread<T: BinaryInteger>(_ pid: Int32, _ call: (Int32) -> T) throws(Errno) -> T {
        do {
            return try check { call(pid) }
        } catch .noSuchProcess {
            let entry = procEntry(pid)
            guard entry != pid else { throw .noSuchProcess }
            return try check { call(entry) }
        }
    }

    /// Sends `signal` to one thread of a thread group. The corresponding system call is `tgkill`.
    package static func threadKill(pid: Int32, tid: Int32, signal: Int32) throws(Errno) {
        try check { mitosis_syscall6(234 /* tgkill */, Int(pid), Int(tid), Int(signal), 0, 0, 0) }
    }

    /// Queues a signal with its full siginfo (a `sigqueue` value included) to one thread of a
    /// thread group. The kernel accepts only user-sent siginfo (`si_code < 0`, not `SI_TKILL`)
    /// for another process. The corresponding system call is `rt_tgsigqueueinfo`.
    package static func threadQueueSignal(pid: Int32, tid: Int32, info: siginfo_t) throws(Errno) {
        var copy = info
        try withUnsafeMutablePointer(to: &copy) { pointer throws(Errno) in
            _ = try check { mitosis_syscall6(297 /* rt_tgsigqueueinfo */, Int(pid), Int(tid), Int(info.si_signo),
                                             Int(bitPattern: UnsafeMutableRawPointer(pointer)), 0, 0) }
        }
    }

    /// Reads a whole file, however /proc sizes it (procfs files report size 0), up to `limit` bytes.
    package static func readFile(_ path: String, limit: Int = 64 << 20) throws(Errno) -> [UInt8] {
        try readFileAt(nil, path, limit: limit)
    }

    /// Reads the whole file `name` relative to `directory` (the current directory when nil), up
    /// to `limit` bytes. The corresponding system calls are `openat` and `read`.
    package static func readFileAt(_ directory: FileDescriptor?, _ name: String, limit: Int = 64 << 20) throws(Errno) -> [UInt8] {
        let fd = try check { openat(directory?.rawValue ?? AT_FDCWD, name, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        // Not zero-filled: /proc files are read thousands of times per inspection.
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 1)
        defer { chunk.deallocate() }
        while bytes.count < limit {
            let n = try check { read(fd, chunk.baseAddress, min(chunk.count, limit - bytes.count)) }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    /// Reads the whole file at `path` whose `stat` tells its size (a regular file, a sysfs binary
    /// attribute such as the kernel's BTF), into an array of that size: no growing and copying
    /// for a file of megabytes. Up to `limit` bytes; the calls are `open`, `fstat` and `read`.
    package static func readSizedFile(_ path: String, limit: Int) throws(Errno) -> [UInt8] {
        let fd = try check { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var status = stat()
        _ = try check { fstat(fd, &status) }
        guard status.st_size > 0 else { return try readFileAt(nil, path, limit: limit) }  // size unknown
        let size = min(Int(status.st_size), limit)
        var failure: Errno?
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = 0
            while count < size {
                let n = read(fd, buffer.baseAddress! + count, size - count)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = Errno(rawValue: errno)
                    return
                }
                if n == 0 { break }
                count += n
            }
        }
        if let failure { throw failure }
        return bytes
    }

    /// Writes `text` to an existing file in one `write` (a `/proc/sys` setting takes it so).
    /// The corresponding system calls are `open` and `write`.
    package static func writeFile(_ path: String, _ text: String) throws(Errno) {
        let fd = try check { open(path, O_WRONLY | O_CLOEXEC) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let written = try check { bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
        guard written == bytes.count else { throw .ioError }
    }

    /// Reads a `/proc` file the kernel writes in one piece (a `seq_file` opened with
    /// `single_open`, such as `fdinfo/N`) into `buffer`, growing it as needed, and returns its
    /// length. A read that returns less than it asked for has delivered the rest of such a file,
    /// so the usual extra `read` that returns 0 is skipped: three system calls (`openat`, `read`,
    /// `close`) for thousands of descriptors instead of four.
    package static func readOnePieceFileAt(_ directory: FileDescriptor?, _ name: String, into buffer: inout [UInt8]) throws(Errno) -> Int {
        let fd = try check { openat(directory?.rawValue ?? AT_FDCWD, name, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        if buffer.count < 4096 { buffer = [UInt8](repeating: 0, count: 4096) }
        var length = 0
        while true {
            let wanted = buffer.count - length
            let n = buffer.withUnsafeMutableBytes { bytes in
                while true {
                    let n = read(fd, bytes.baseAddress! + length, wanted)
                    if n >= 0 || errno != EINTR { return n }
                }
            }
            if n < 0 { throw Errno(rawValue: errno) }
            length += n
            if n < wanted { return length }
            buffer.append(contentsOf: repeatElement(0, count: buffer.count))
        }
    }

    /// The target of a symbolic link such as `/proc/PID/fd/N`, as raw bytes decoded leniently.
    /// The corresponding C function is `readlink`.
    package static func readLink(_ path: String) throws(Errno) -> String {
        try readLinkAt(nil, path)
    }

    /// The target of symbolic link `name` relative to `directory` (the current directory when nil).
    /// The corresponding system call is `readlinkat`.
    package static func readLinkAt(_ directory: FileDescriptor?, _ name: String) throws(Errno) -> String {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(PATH_MAX) + 1, alignment: 1)
        defer { buffer.deallocate() }
        let n = try check {
            readlinkat(directory?.rawValue ?? AT_FDCWD, name, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), buffer.count - 1)
        }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    /// Names in a directory, without `.` and `..`. The corresponding C function is `readdir`.
    package static func listDirectory(_ path: String) throws(Errno) -> [String] {
        try listDirectory(try openAt(nil, path, flags: O_RDONLY | O_DIRECTORY))
    }

    /// Names in the open directory `fd`, without `.` and `..`; `fd` is consumed (closed).
    /// The corresponding C functions are `fdopendir` and `readdir`.
    package static func listDirectory(_ fd: FileDescriptor) throws(Errno) -> [String] {
        guard let dir = fdopendir(fd.rawValue) else {
            let error = Errno(rawValue: errno)
            closeDescriptor(fd)
            throw error
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// `stat` of a path. The corresponding C function is `stat`.
    package static func status(_ path: String) throws(Errno) -> FileStatus {
        try statusAt(nil, path)
    }

    /// `stat` of `name` relative to `directory`, following symbolic links (through
    /// `/proc/PID/fd/N`, the open file itself). The corresponding system call is `fstatat`.
    package static func statusAt(_ directory: FileDescriptor?, _ name: String) throws(Errno) -> FileStatus {
        var st = stat()
        try check { fstatat(directory?.rawValue ?? AT_FDCWD, name, &st, 0) }
        return FileStatus(st)
    }
}
