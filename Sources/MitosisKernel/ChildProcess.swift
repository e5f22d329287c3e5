import CMitosis
import Foundation
import Glibc
import SystemPackage

/// A child process started with `posix_spawn`: the one launcher of the project (targets, the CLI
/// under test, peer tools in benchmarks).
///
/// Foundation's `Process` is no substitute: its monitor thread calls `waitpid` on every child it
/// launched, so it collects the ptrace stops a freeze waits for, and while one of its children
/// is frozen it reaps no other child of the process.
package final class ChildProcess: @unchecked Sendable {
    /// Where a standard stream of the child goes.
    package enum Stream: Sendable {
        /// A pipe whose other end this process holds (`input` / `output` / `errorOutput`).
        case pipe
        /// `/dev/null`.
        case null
        /// The same descriptor as this process.
        case inherit
    }

    package let pid: Int32
    /// The write end of the child's stdin, when it is a pipe. Closing it is the child's cue to exit.
    package private(set) var input: Int32?
    /// The read ends of the child's stdout and stderr, when they are pipes.
    package let output: Int32?
    package let errorOutput: Int32?
    private var status: Int32?

    /// Spawns `executable arguments…`. The child starts with no blocked signals and default
    /// dispositions: a test runner's threads block most signals, and a child must not inherit that.
    /// The corresponding C function is `posix_spawn`.
    /// With `onlyStandardStreams`, the child starts with descriptors 0–2 only: a program under
    /// test (a server to checkpoint) must not inherit whatever this process holds open.
    package init(executable: String, arguments: [String] = [],
                 stdin: Stream = .pipe, stdout: Stream = .pipe, stderr: Stream = .inherit,
                 onlyStandardStreams: Bool = false) throws(Errno) {
        var pipes: [Int32] = []
        func makePipe() throws(Errno) -> (read: Int32, write: Int32) {
            var ends: [Int32] = [0, 0]
            guard mitosis_pipe_cloexec(&ends) == 0 else { throw Errno(rawValue: errno) }
            pipes += ends
            return (ends[0], ends[1])
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var parentEnds: [Int32?] = [nil, nil, nil]
        do {
            for (fd, stream) in [stdin, stdout, stderr].enumerated() {
                switch stream {
                case .inherit: break
                case .null:
                    posix_spawn_file_actions_addopen(&actions, Int32(fd), "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
                case .pipe:
                    let ends = try makePipe()
                    posix_spawn_file_actions_adddup2(&actions, fd == 0 ? ends.read : ends.write, Int32(fd))
                    parentEnds[fd] = fd == 0 ? ends.write : ends.read
                }
            }
        } catch {
            pipes.forEach { Glibc.close($0) }
            throw error
        }
        if onlyStandardStreams { mitosis_spawn_close_from(&actions, 3) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t(), allSignals = sigset_t()
        sigemptyset(&noSignals)
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        var rc = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        // ETXTBSY: a fork elsewhere in this process still holds a descriptor open for writing
        // on the executable (one just copied or compiled) until that child execs: it passes.
        for _ in 0..<100 where rc == ETXTBSY {
            usleep(10_000)
            rc = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        }
        // The child's ends are the child's now; ours are the ones in `parentEnds`.
        for fd in pipes where !parentEnds.contains(fd) { Glibc.close(fd) }
        guard rc == 0 else {
            parentEnds.compactMap { $0 }.forEach { Glibc.close($0) }
            throw Errno(rawValue: rc)
        }
        pid = child
        input = parentEnds[0]
        output = parentEnds[1]
        errorOutput = parentEnds[2]
    }

    /// Writes all of `bytes` to the child's stdin. The corresponding system call is `write`.
    ///
    /// A child that has exited makes this throw `EPIPE`, never raise SIGPIPE (which would end this
    /// process): a pipe has no `MSG_NOSIGNAL`, so SIGPIPE is blocked on this thread for the write
    /// and, when the write raised it, taken off the thread's pending set again.
    package func write(_ bytes: [UInt8]) throws(Errno) {
        guard let input else { throw .badFileDescriptor }
        var pipeSignal = sigset_t(), previousMask = sigset_t(), pending = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &previousMask)
        sigpending(&pending)
        let alreadyPending = sigismember(&pending, SIGPIPE) == 1
        defer {
            if !alreadyPending {
                var none = timespec(tv_sec: 0, tv_nsec: 0)
                while sigtimedwait(&pipeSignal, nil, &none) == -1 && errno == EINTR {}
            }
            pthread_sigmask(SIG_SETMASK, &previousMask, nil)
        }
        var offset = 0
        while offset < bytes.count {
            let n = try Kernel.check { bytes[offset...].withUnsafeBytes { Glibc.write(input, $0.baseAddress, $0.count) } }
            offset += n
        }
    }

    /// Closes the child's stdin: end of input.
    package func closeInput() {
        if let input { Glibc.close(input) }
        input = nil
    }

    /// Reads stdout and stderr (those that are pipes) until both reach end of file. Blocks: call
    /// it from a dedicated thread (`Blocking.run`), never from the cooperative pool.
    package func readToEnd() -> (output: [UInt8], errorOutput: [UInt8]) {
        var collected: [Int32: [UInt8]] = [:]
        var open = [output, errorOutput].compactMap { $0 }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !open.isEmpty {
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 { if errno == EINTR { continue } else { break } }
            for entry in fds where entry.revents != 0 {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(entry.fd, $0.baseAddress, $0.count) }
                if n > 0 { collected[entry.fd, default: []] += chunk[0..<n] }
                else if n == 0 || errno != EINTR { open.removeAll { $0 == entry.fd } }
            }
        }
        return (output.map { collected[$0] ?? [] } ?? [], errorOutput.map { collected[$0] ?? [] } ?? [])
    }

    /// Reads one line (without its newline) from stdout, or nil at end of file, within
    /// `timeout`. Blocks the calling thread.
    package func readLine(timeout: Duration) -> String? {
        guard let output else { return nil }
        let deadline = ContinuousClock.now + timeout
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { return nil }
            var entry = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1)
            if poll(&entry, 1, milliseconds) <= 0 { continue }
            guard Glibc.read(output, &byte, 1) == 1 else { return line.isEmpty ? nil : String(decoding: line, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
    }

    /// Sends `signal` to the child. The corresponding system call is `kill`.
    package func signal(_ signal: Int32) {
        if status == nil { Glibc.kill(pid, signal) }
    }

    /// Whether the child has neither exited nor been reaped.
    package var isRunning: Bool {
        guard status == nil else { return false }
        var raw: Int32 = 0
        let rc = waitpid(pid, &raw, WNOHANG)
        if rc == pid { status = raw; return false }
        return true
    }

    /// Waits for the child to exit and returns its wait status (`WIFEXITED`…), reaping it.
    /// Idempotent. Blocks: call it from a dedicated thread. The corresponding system call is `waitpid`.
    @discardableResult
    package func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) == -1 && errno == EINTR {}
        status = raw
        return raw
    }

    /// User plus system CPU time of every reaped child of this process so far: the difference
    /// around one child's run is that child's CPU time, which a loaded machine disturbs less than
    /// its wall time. The corresponding system call is `getrusage(RUSAGE_CHILDREN)`.
    package static func reapedChildrenCPUTime() -> Duration {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_CHILDREN.rawValue), &usage)
        let microseconds = (Int64(usage.ru_utime.tv_sec) + Int64(usage.ru_stime.tv_sec)) * 1_000_000
            + Int64(usage.ru_utime.tv_usec) + Int64(usage.ru_stime.tv_usec)
        return .microseconds(microseconds)
    }

    /// The exit code, or 128 + the signal that killed it, as a shell reports it.
    package static func exitCode(of status: Int32) -> Int32 {
        mitosis_wifexited(status) != 0 ? mitosis_wexitstatus(status) : 128 + mitosis_wtermsig(status)
    }

    /// Kills and reaps the child (its pipes stay open until the value is released). Idempotent.
    package func kill() {
        signal(SIGKILL)
        wait()
    }

    private func closeAll() {
        closeInput()
        [output, errorOutput].compactMap { $0 }.forEach { Glibc.close($0) }
    }

    deinit {
        kill()
        closeAll()
    }
}

/// Runs blocking work (waiting for a child, reading a pipe, a long copy) on a thread of its own,
/// so the Swift cooperative pool — as wide as the CPU count — is never tied up by it.
package enum Blocking {
    package static func run<T: Sendable>(_ name: String = "mitosis-blocking", _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                continuation.resume(with: Result { try body() })
            }
            thread.name = name
            thread.start()
        }
    }
}
