import CMitosis
import Foundation
import Glibc
import SystemPackage

/// Netlink sockets and network namespaces: what the sock_diag client needs from the kernel.
extension Kernel {
    /// Opens a raw netlink socket speaking `netlinkProtocol` (e.g. `NETLINK_SOCK_DIAG`) in the
    /// calling thread's network namespace. The corresponding system call is `socket`.
    package static func openNetlink(protocol netlinkProtocol: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try check {
            socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkProtocol)
        })
    }

    /// Sends one datagram to the kernel on a netlink socket. The corresponding system call is `send`.
    package static func netlinkSend(_ socket: FileDescriptor, _ bytes: UnsafeRawBufferPointer) throws(Errno) {
        let sent = try check { send(socket.rawValue, bytes.baseAddress, bytes.count, 0) }
        if sent != bytes.count { throw Errno.messageTooLong }
    }

    /// Receives one datagram into `buffer`, returning its length. The corresponding system call is `recv`.
    package static func netlinkReceive(_ socket: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try check { recv(socket.rawValue, buffer.baseAddress, buffer.count, 0) }
    }

    /// Opens a file read-only (close-on-exec). The corresponding system call is `open`.
    package static func openReadOnly(_ path: String) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try check { open(path, O_RDONLY | O_CLOEXEC) })
    }

    /// Closes a descriptor this process owns. The corresponding system call is `close`.
    package static func closeDescriptor(_ descriptor: FileDescriptor) {
        _ = Glibc.close(descriptor.rawValue)
    }

    /// Moves the *calling thread* into the namespace behind `namespace` (a `/proc/PID/ns/*`
    /// descriptor); `type` is a `CLONE_NEW*` flag, 0 for any. The corresponding system call is `setns`.
    package static func enterNamespace(_ namespace: FileDescriptor, type: Int32) throws(Errno) {
        try check { mitosis_setns(namespace.rawValue, type) }
    }

    /// Runs `body` on a short-lived OS thread that first joins the network namespace of
    /// `/proc/PID/ns/net`. Whatever sockets `body` creates stay bound to that namespace after the
    /// thread exits; the rest of this process never leaves its own namespace.
    /// The corresponding system call is `setns`.
    package static func inNetworkNamespace<T: Sendable>(
        of pid: Int32, _ body: @escaping @Sendable () throws(Errno) -> T
    ) throws(Errno) -> T {
        try inNetworkNamespace(at: "/proc/\(procEntry(pid))/ns/net", threadName: "mitosis-netns-\(pid)", body)
    }

    /// Runs `body` on a short-lived OS thread that first joins the named network namespace
    /// (`/run/netns/NAME`, made by `ip netns add`). Threads `body` starts (an event loop group's)
    /// live in that namespace for good. The corresponding system call is `setns`.
    package static func inNetworkNamespace<T: Sendable>(
        named name: String, _ body: @escaping @Sendable () throws(Errno) -> T
    ) throws(Errno) -> T {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else { throw .invalidArgument }
        return try inNetworkNamespace(at: "/run/netns/\(name)", threadName: "mitosis-netns", body)
    }

    private static func inNetworkNamespace<T: Sendable>(
        at path: String, threadName: String, _ body: @escaping @Sendable () throws(Errno) -> T
    ) throws(Errno) -> T {
        let namespace = try openReadOnly(path)
        defer { closeDescriptor(namespace) }
        let outcome = ThreadOutcome<T>()
        let thread = Thread {
            outcome.set(Result { () throws(Errno) -> T in
                try enterNamespace(namespace, type: MITOSIS_CLONE_NEWNET)
                return try body()
            })
        }
        thread.name = threadName
        thread.start()
        return try outcome.wait().get()
    }
}

/// Hands a result from a one-shot thread back to the thread waiting for it.
private final class ThreadOutcome<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, Errno>?

    package func set(_ value: Result<T, Errno>) {
        result = value
        done.signal()
    }

    package func wait() -> Result<T, Errno> {
        done.wait()
        return result!
    }
}
