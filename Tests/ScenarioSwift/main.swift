// A Swift target for the stacks tests: one thread blocked in pause() under a call chain of
// methods of a Swift type, so that Swift demangling has something to do.
//
// Prints `READY pid=N tid=N` once the thread sleeps in pause() and after each command line;
// exits when stdin closes.
import Glibc

nonisolated(unsafe) var workerTID: Int32 = 0
nonisolated(unsafe) var started = sem_t()

enum Chain {
    @inline(never) static func third(_ depth: Int) {
        workerTID = currentThreadID()
        sem_post(&started)
        while true { pause() }
    }

    @inline(never) static func second(_ depth: Int) {
        third(depth + 1)
        print(depth)  // keeps the call from becoming a tail call
    }

    @inline(never) static func first(_ depth: Int) {
        second(depth + 1)
        print(depth)
    }
}

/// The worker thread's body. A plain function, not a closure in top-level code, which would be
/// isolated to the main actor and trap when run on another thread.
func threadMain(_ argument: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    Chain.first(0)
    return nil
}

/// The calling thread's kernel id, from `/proc/thread-self` (→ `PID/task/TID`).
func currentThreadID() -> Int32 {
    var buffer = [CChar](repeating: 0, count: 64)
    let count = readlink("/proc/thread-self", &buffer, buffer.count - 1)
    let link = String(decoding: buffer[0..<max(0, count)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return Int32(link.split(separator: "/").last ?? "") ?? -1
}

/// Waits until thread `tid` sleeps inside pause() (system call 34).
func awaitPause(_ tid: Int32) {
    for _ in 0..<2000 {
        if let file = fopen("/proc/self/task/\(tid)/syscall", "r") {
            var number = -1
            let matched = withUnsafeMutablePointer(to: &number) { pointer in
                withVaList([pointer]) { vfscanf(file, "%ld", $0) }
            }
            fclose(file)
            if matched == 1 && number == 34 { return }
        }
        usleep(1000)
    }
}

sem_init(&started, 0, 0)
var thread = pthread_t()
pthread_create(&thread, nil, threadMain, nil)
sem_wait(&started)
awaitPause(workerTID)
// Answers every command line (`ping`) with the same READY line, as the scenario harness does.
let ready = Array("READY pid=\(getpid()) tid=\(workerTID)\n".utf8)
repeat {
    _ = write(1, ready, ready.count)
} while readLine() != nil
exit(0)
