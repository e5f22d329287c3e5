import CMitosis
import Glibc
import SystemPackage

/// A short-lived forked child to try kernel features on (`mitosis check`): it only waits, exits
/// when this process dies (whichever thread forked it), and shares with this process one pipe
/// (same descriptor number, same open file), a marker string and a present page (same
/// addresses). `end()` kills and reaps it.
package final class ProbeChild: @unchecked Sendable {
    private var raw = mitosis_probe_child()
    private var ended = false

    package var pid: Int32 { raw.pid }
    /// A descriptor number that refers to the same open file (a pipe's read end) in both processes.
    package var sharedFD: Int32 { raw.shared_fd }
    /// Where the marker string lives, in both processes.
    package var markerAddress: UInt64 { raw.marker_address }
    /// The marker's bytes, as the child holds them.
    package let marker = Array("mitosis kernel probe marker".utf8)
    /// A page-aligned page present in both processes.
    package var pageAddress: UInt64 { raw.page_address }

    /// Forks the child. The corresponding system call is `fork`.
    package init() throws(Errno) {
        try Kernel.check { mitosis_probe_child_spawn(&raw) }
    }

    /// Kills and reaps the child. Idempotent. The corresponding system calls are `kill` and `waitpid`.
    package func end() {
        guard !ended else { return }
        ended = true
        withUnsafePointer(to: &raw) { mitosis_probe_child_end($0) }
    }

    deinit { end() }
}
