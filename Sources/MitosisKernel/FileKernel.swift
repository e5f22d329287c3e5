import CMitosis
import Glibc
import SystemPackage

/// File-system calls relative to an open directory, as checkpoint images need them: nothing is
/// resolved twice by path, and symbolic links are never followed where it matters.
extension Kernel {
    /// Opens `name` relative to `directory` (the current directory when nil).
    /// The corresponding system call is `openat`.
    package static func openAt(_ directory: FileDescriptor?, _ name: String, flags: Int32, mode: mode_t = 0) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try check { openat(directory?.rawValue ?? AT_FDCWD, name, flags | O_CLOEXEC, mode) })
    }

    /// Creates directory `name` relative to `directory`. The corresponding system call is `mkdirat`.
    package static func makeDirectoryAt(_ directory: FileDescriptor?, _ name: String, mode: mode_t) throws(Errno) {
        try check { mkdirat(directory?.rawValue ?? AT_FDCWD, name, mode) }
    }

    /// Renames `from` to `to` (both relative to `directory`), failing with EEXIST instead of
    /// replacing what is at `to`. The corresponding system call is `renameat2` with `RENAME_NOREPLACE`.
    package static func renameNoReplace(_ directory: FileDescriptor?, _ from: String, _ to: String) throws(Errno) {
        let dir = Int(directory?.rawValue ?? AT_FDCWD)
        let result = from.withCString { source in
            to.withCString { target in
                mitosis_syscall6(316 /* renameat2 */, dir, Int(bitPattern: source), dir, Int(bitPattern: target), 1 /* RENAME_NOREPLACE */, 0)
            }
        }
        if result == -1 { throw Errno(rawValue: errno) }
    }

    /// Removes `name` relative to `directory` (`AT_REMOVEDIR` in `flags` for a directory).
    /// The corresponding system call is `unlinkat`.
    package static func unlinkAt(_ directory: FileDescriptor?, _ name: String, flags: Int32 = 0) throws(Errno) {
        try check { unlinkat(directory?.rawValue ?? AT_FDCWD, name, flags) }
    }

    /// Opens a directory for reading (and for `*at` calls relative to it).
    /// The corresponding system call is `openat` with `O_DIRECTORY`.
    package static func openDirectory(_ path: String) throws(Errno) -> FileDescriptor {
        try openAt(nil, path, flags: O_RDONLY | O_DIRECTORY)
    }

    /// `stat` of `name` relative to `directory`, not following a final symbolic link.
    /// The corresponding system call is `fstatat` with `AT_SYMLINK_NOFOLLOW`.
    package static func linkStatusAt(_ directory: FileDescriptor?, _ name: String) throws(Errno) -> FileStatus {
        var st = stat()
        try check { fstatat(directory?.rawValue ?? AT_FDCWD, name, &st, AT_SYMLINK_NOFOLLOW) }
        return FileStatus(st)
    }

    /// `stat` of an open file. The corresponding system call is `fstat`.
    package static func status(of fd: FileDescriptor) throws(Errno) -> FileStatus {
        var st = stat()
        try check { fstat(fd.rawValue, &st) }
        return FileStatus(st)
    }

    /// Flushes a file's data and metadata to storage. The corresponding system call is `fsync`.
    package static func sync(_ fd: FileDescriptor) throws(Errno) {
        try check { fsync(fd.rawValue) }
    }

    /// Flushes a file's data, and only the metadata needed to read it back (its size), to
    /// storage. The corresponding system call is `fdatasync`.
    package static func dataSync(_ fd: FileDescriptor) throws(Errno) {
        try check { fdatasync(fd.rawValue) }
    }

    /// Starts writing a file's dirty pages to storage without waiting for them: a later
    /// `dataSync` then waits for little. The corresponding system call is `sync_file_range`
    /// with `SYNC_FILE_RANGE_WRITE` over the whole file.
    package static func startWriteback(_ fd: FileDescriptor) throws(Errno) {
        // Glibc declares it only under _GNU_SOURCE: the system call itself (x86_64: 277).
        try check { mitosis_syscall6(277 /* sync_file_range */, Int(fd.rawValue), 0, 0, 2 /* SYNC_FILE_RANGE_WRITE */, 0, 0) }
    }

    /// Turns direct I/O on or off for an open file: writes then go from the caller's memory to
    /// the device, bypassing the page cache, and buffers, lengths and file offsets must be aligned
    /// to the file system's block size. Fails (EINVAL) where the file system has no direct I/O.
    /// The corresponding system call is `fcntl(F_SETFL)` with `O_DIRECT`.
    package static func setDirectIO(_ fd: FileDescriptor, _ on: Bool) throws(Errno) {
        let flags = try check { fcntl(fd.rawValue, F_GETFL) }
        let direct = Int32(__O_DIRECT)
        _ = try check { fcntl(fd.rawValue, F_SETFL, on ? flags | direct : flags & ~direct) }
    }

    /// Whether `fd` is a terminal. The corresponding library call is `isatty`.
    package static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Sets a file's length. The corresponding system call is `ftruncate`.
    package static func truncate(_ fd: FileDescriptor, to length: Int) throws(Errno) {
        try check { ftruncate(fd.rawValue, off_t(length)) }
    }

    /// Sets a file's permission bits. The corresponding system call is `fchmod`.
    package static func changeMode(_ fd: FileDescriptor, _ mode: mode_t) throws(Errno) {
        try check { fchmod(fd.rawValue, mode) }
    }

    /// Writes all of `buffer`, continuing after short writes. The corresponding system call is `write`.
    package static func writeAll(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < buffer.count {
            offset += try check { write(fd.rawValue, buffer.baseAddress! + offset, buffer.count - offset) }
        }
    }

    /// Writes all of `bytes`, continuing after short writes. The corresponding system call is `write`.
    package static func writeAll(_ fd: FileDescriptor, _ bytes: [UInt8], at offset: UInt64? = nil) throws(Errno) {
        let result: Result<Void, Errno> = bytes.withUnsafeBytes { buffer in
            Result { () throws(Errno) in
                if let offset { try writeAll(fd, buffer, at: offset) } else { try writeAll(fd, buffer) }
            }
        }
        try result.get()
    }

    /// Writes all of `buffer` at file offset `offset`. The corresponding system call is `pwrite`.
    package static func writeAll(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(Errno) {
        var done = 0
        while done < buffer.count {
            done += try check { pwrite(fd.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) }
        }
    }

    /// Reads into `buffer` from file offset `offset` until it is full or the file ends; returns
    /// the bytes read. The corresponding system call is `pread`.
    /// An offset past what `off_t` holds fails with EOVERFLOW instead of trapping.
    package static func readAt(_ fd: FileDescriptor, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard offset <= UInt64(Int64.max) - UInt64(buffer.count) else { throw .overflow }
        var done = 0
        while done < buffer.count {
            let n = try check { pread(fd.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done)) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads up to `count` bytes from file offset `offset`; fewer only where the file ends.
    /// The corresponding system call is `pread`.
    package static func readAt(_ fd: FileDescriptor, offset: UInt64, count: Int) throws(Errno) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result: Result<Int, Errno> = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(Errno) in try readAt(fd, offset: offset, into: buffer) }
        }
        bytes.removeLast(count - (try result.get()))
        return bytes
    }

    /// Reads into `buffer` until it is full or the stream ends; returns the bytes read.
    /// The corresponding system call is `read`.
    package static func readFully(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try check { read(fd.rawValue, buffer.baseAddress! + done, buffer.count - done) }
            if n == 0 { break }
            done += n
        }
        return done
    }
}

extension Kernel {
    /// The canonical absolute form of an existing path: no `.`, `..` or symbolic links.
    /// The corresponding C function is `realpath`.
    package static func canonicalPath(_ path: String) throws(Errno) -> String {
        guard let resolved = realpath(path, nil) else { throw Errno(rawValue: errno) }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Whether `fd` is a socket. The corresponding system call is `fstat`.
    package static func isSocket(_ fd: FileDescriptor) -> Bool {
        guard let st = try? status(of: fd) else { return false }
        return st.type == .socket
    }

    /// Sends all of `buffer` on a socket without raising SIGPIPE when the peer has gone (EPIPE
    /// is returned instead). The corresponding system call is `send` with `MSG_NOSIGNAL`.
    package static func sendAll(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < buffer.count {
            offset += try check { send(fd.rawValue, buffer.baseAddress! + offset, buffer.count - offset, Int32(MSG_NOSIGNAL)) }
        }
    }
}

/// `open(2)` flags by name, so that no layer above the kernel spells `O_…`.
package struct OpenOptions: OptionSet, Sendable {
    package let rawValue: Int32
    package init(rawValue: Int32) { self.rawValue = rawValue }

    package static let readOnly = OpenOptions(rawValue: O_RDONLY)
    package static let writeOnly = OpenOptions(rawValue: O_WRONLY)
    package static let directory = OpenOptions(rawValue: O_DIRECTORY)
    /// Never block in `open` (a FIFO) and never in reads.
    package static let nonBlocking = OpenOptions(rawValue: O_NONBLOCK)
    /// Refuse a final symbolic link (ELOOP).
    package static let noFollow = OpenOptions(rawValue: O_NOFOLLOW)
    /// Never acquire a controlling terminal by opening a tty.
    package static let noControllingTerminal = OpenOptions(rawValue: O_NOCTTY)
    package static let create = OpenOptions(rawValue: O_CREAT)
    package static let exclusive = OpenOptions(rawValue: O_EXCL)
}

extension Kernel {
    /// Opens `name` relative to `directory` (close-on-exec always).
    /// The corresponding system call is `openat`.
    package static func openAt(_ directory: FileDescriptor?, _ name: String, options: OpenOptions, mode: UInt32 = 0) throws(Errno) -> FileDescriptor {
        try openAt(directory, name, flags: options.rawValue, mode: mode_t(mode))
    }
}
