import Foundation

/// A serial executor bound to one OS thread for its whole life.
///
/// The kernel accepts ptrace requests for a tracee only from the thread that attached to it, and
/// Swift's default actors and dispatch queues hop between threads. An actor whose
/// `unownedExecutor` is one of these runs every job on the same thread. When the thread ends
/// (after `shutdown()`), the kernel detaches any tracee still attached: the last safety net
/// should Mitosis itself fail to detach.
package final class DedicatedThreadExecutor: SerialExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    /// Work from `sync`, with the semaphore its caller waits on.
    private var closures: [(run: () -> Void, done: DispatchSemaphore)] = []
    private var stopping = false
    private var thread: Thread!
    /// The kernel thread id of the executor's thread, known once it has started.
    public private(set) var threadID: Int32 = 0

    package init(name: String) {
        let started = DispatchSemaphore(value: 0)
        thread = Thread { [self] in
            self.threadID = Kernel.currentThreadID()
            started.signal()
            self.runLoop()
        }
        thread.name = name
        thread.start()
        started.wait()
    }

    private func runLoop() {
        while true {
            condition.lock()
            while jobs.isEmpty && closures.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty && closures.isEmpty && stopping {
                condition.unlock()
                return
            }
            let job = jobs.isEmpty ? nil : jobs.removeFirst()
            var closure = job == nil ? closures.removeFirst() : nil
            condition.unlock()
            if let job { job.runSynchronously(on: asUnownedSerialExecutor()) }
            if let done = closure?.done {
                closure?.run()
                // Release the closure before waking its caller: `sync` hands over a non-escaping
                // closure, which must be gone when the caller returns.
                closure = nil
                done.signal()
            }
        }
    }

    package func enqueue(_ job: UnownedJob) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    package func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Runs `body` on the executor's thread and waits for it. For synchronous callers only;
    /// calling it from the executor's own thread would deadlock, so that case runs inline.
    package func sync<T>(_ body: () throws -> T) throws -> T {
        if Kernel.currentThreadID() == threadID { return try body() }
        return try withoutActuallyEscaping(body) { escapable in
            var result: Result<T, any Error>!
            let done = DispatchSemaphore(value: 0)
            let box = UnsafeSendableBox(escapable)
            condition.lock()
            closures.append((run: { result = Result { try box.value() } }, done: done))
            condition.signal()
            condition.unlock()
            done.wait()
            return try result.get()
        } as T
    }

    /// Lets the thread finish its queued work and exit. Owners must call it: the thread keeps
    /// the executor alive until then.
    package func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }
}

/// Carries a value across a boundary the compiler cannot see is safe (a blocking hand-off).
private struct UnsafeSendableBox<T>: @unchecked Sendable {
    package let value: T
    package init(_ value: T) { self.value = value }
}
