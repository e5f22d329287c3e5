import CMitosis
import Glibc
import SystemPackage

extension Kernel {
    /// Sends `signal` to the process behind `pidfd` — never to a process that reused its pid.
    /// The corresponding system call is `pidfd_send_signal`.
    package static func pidfdSendSignal(_ pidfd: FileDescriptor, _ signal: Int32) throws(Errno) {
        try check { mitosis_pidfd_send_signal(pidfd.rawValue, signal) }
    }

    /// Kills the process behind `pidfd` with SIGKILL. The corresponding system call is `pidfd_send_signal`.
    package static func pidfdKill(_ pidfd: FileDescriptor) throws(Errno) {
        try pidfdSendSignal(pidfd, SIGKILL)
    }
}
