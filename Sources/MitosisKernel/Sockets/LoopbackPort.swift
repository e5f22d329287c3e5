import Glibc
import SystemPackage

extension Kernel {
    /// A TCP port of 127.0.0.1 that nothing listens on now: bound with port 0, read back, and
    /// released — for a server a test, benchmark or demo starts next (another process may take
    /// it in between; the window is short). The calls are `socket`, `bind`, `getsockname`.
    package static func freeLoopbackPort() throws(Errno) -> UInt16 {
        let fd = try check { socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let failure: Errno? = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 ? nil : Errno(rawValue: errno)
            }
        }
        if let failure { throw failure }
        return UInt16(bigEndian: address.sin_port)
    }
}
