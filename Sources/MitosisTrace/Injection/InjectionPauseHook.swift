import Foundation
import MitosisKernel

/// A test hook: with `MITOSIS_TEST_INJECTION_PAUSE=N` (or `N:MILLISECONDS`) in its environment,
/// the process stops at the Nth step any injection reaches, reports it on stderr as
/// `mitosis-test: injection paused at step N NAME thread TID`, and waits there forever (or for
/// the given time), so that a test can kill Mitosis at exactly that point and check the target.
/// `MITOSIS_TEST_INJECTION_PAUSE=0` only reports each step (`… injection step K NAME …`).
enum InjectionPauseHook {
    /// The points of one injection, in order (`stubPlaced` only once per process).
    enum Step: String {
        case stubPlaced = "stub-placed"
        case frameWritten = "frame-written"
        case registersBorrowed = "registers-borrowed"
        case syscallEntry = "syscall-entry"
        case syscallExit = "syscall-exit"
        case registersRestored = "registers-restored"
        /// An injected program (`Tracer.runProgram`): its registers and mask set, not yet resumed;
        /// stopped at its end, its registers not yet put back.
        case programStarted = "program-started"
        case programEnded = "program-ended"
    }

    private static let settings: (step: Int, milliseconds: Int?)? = {
        guard let value = ProcessInfo.processInfo.environment["MITOSIS_TEST_INJECTION_PAUSE"] else { return nil }
        let parts = value.split(separator: ":")
        guard let step = parts.first.flatMap({ Int($0) }), step >= 0 else { return nil }
        return (step, parts.count > 1 ? Int(parts[1]) : nil)
    }()
    private static let counter = Counter()

    static func reached(_ step: Step, tid: Int32) {
        guard let settings else { return }
        let count = counter.next()
        if settings.step == 0 { return report("injection step \(count) \(step.rawValue) thread \(tid)") }
        guard count == settings.step else { return }
        report("injection paused at step \(count) \(step.rawValue) thread \(tid)")
        // The pause also ends if the test that set it dies (this process is re-parented).
        let deadline = ContinuousClock.now + .milliseconds(settings.milliseconds ?? Int(Int32.max))
        let parent = Kernel.parentProcessID()
        while ContinuousClock.now < deadline && Kernel.parentProcessID() == parent { Thread.sleep(forTimeInterval: 0.01) }
    }

    private static func report(_ text: String) {
        let line = Array("mitosis-test: \(text)\n".utf8)
        Kernel.writeStandardError(line)
    }

    private final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        func next() -> Int { lock.withLock { value += 1; return value } }
    }
}
