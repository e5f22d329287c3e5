import Foundation
import Mitosis
import MitosisKernel

/// One line on standard error that a long checkpoint keeps rewriting (`mitosis dump: writing
/// 512 / 1024 MiB`): only on a terminal, only once the work has taken a second, at most ten
/// times a second, and erased when the work ends.
final class ProgressLine: @unchecked Sendable {
    private let lock = NSLock()
    private let clock = ContinuousClock()
    private let started: ContinuousClock.Instant
    private var lastShown: ContinuousClock.Instant?
    private let label: String
    private let enabled: Bool

    init(_ label: String) {
        self.label = label
        started = clock.now
        enabled = Kernel.isTerminal(2)
    }

    func update(_ progress: CheckpointProgress) {
        guard enabled else { return }
        lock.withLock {
            let now = clock.now
            guard now - started >= .seconds(1), lastShown.map({ now - $0 >= .milliseconds(100) }) ?? true else { return }
            lastShown = now
            let mib = { (bytes: UInt64) in String(bytes >> 20) }
            show("\r\u{1B}[K\(label): \(progress.phase.rawValue) \(mib(progress.done)) / \(mib(progress.total)) MiB")
        }
    }

    /// Erases the line, if one was shown.
    func end() {
        lock.withLock {
            guard lastShown != nil else { return }
            lastShown = nil
            show("\r\u{1B}[K")
        }
    }

    private func show(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }
}
