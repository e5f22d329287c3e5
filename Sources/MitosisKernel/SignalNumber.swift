import Glibc

/// Signal numbers for layers that must not import libc.
package enum SignalNumber {
    package static let kill: Int32 = SIGKILL
    package static let stop: Int32 = SIGSTOP
    package static let terminate: Int32 = SIGTERM
}
