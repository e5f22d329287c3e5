import CMitosis
import Glibc
import SystemPackage
import MitosisModel

/// A client of the kernel's `NETLINK_SOCK_DIAG` interface, bound to one network namespace.
///
/// sock_diag answers only for the namespace its socket was created in. To see a target that
/// lives in another network namespace, the client creates its netlink socket on a short-lived
/// thread that has joined the target's namespace (`Kernel.inNetworkNamespace`); the tool itself
/// never moves. Reading needs no freeze: the kernel answers while the target runs.
package final class SockDiag {
    private let socket: FileDescriptor
    private var sequence: UInt32 = 0
    /// One receive buffer, reused: dump datagrams are at most a few pages each.
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 17, alignment: 8)

    /// A client for this process's own network namespace, or for the one `pid` lives in.
    package init(networkNamespaceOf pid: Int32? = nil) throws(MitosisError) {
        do {
            if let pid, !Self.sharesNetworkNamespace(with: pid) {
                socket = try Kernel.inNetworkNamespace(of: pid) { () throws(Errno) in
                    try Kernel.openNetlink(protocol: Int32(MITOSIS_NETLINK_SOCK_DIAG))
                }
            } else {
                socket = try Kernel.openNetlink(protocol: Int32(MITOSIS_NETLINK_SOCK_DIAG))
            }
        } catch .noSuchFileOrDirectory {
            buffer.deallocate()
            throw .noSuchProcess(pid ?? 0)
        } catch .notPermitted, .permissionDenied {
            buffer.deallocate()
            throw .permissionDenied(pid ?? 0, operation: "enter the network namespace of")
        } catch {
            buffer.deallocate()
            throw .system(operation: "opening a NETLINK_SOCK_DIAG socket", errno: error)
        }
    }

    deinit {
        Kernel.closeDescriptor(socket)
        buffer.deallocate()
    }

    /// Whether `pid` is in the same network namespace as this process.
    package static func sharesNetworkNamespace(with pid: Int32) -> Bool {
        guard let own = try? Kernel.status("/proc/self/ns/net"), let theirs = try? Kernel.status("/proc/\(Kernel.procEntry(pid))/ns/net")
        else { return true }
        return own.inode == theirs.inode && own.device == theirs.device
    }

    /// Every TCP, UDP (IPv4 and IPv6), UNIX, netlink and packet socket of the namespace.
    package func table() throws(MitosisError) -> SocketTable {
        var table = SocketTable()
        for family in Self.inetDumps + [Self.unixDump, Self.netlinkDump, Self.packetDump] where !(try dump(family, into: &table)) {
            table.unavailable.append(family.name)
        }
        return table
    }

    /// One sock_diag dump: the request for one family's sockets (each family's file in
    /// `Sockets/` defines its own) and how each reply message becomes a model value.
    struct Dump: Sendable {
        /// What `SocketTable.unavailable` calls the family when the kernel cannot dump it.
        let name: String
        /// Writes the request into a buffer of the given capacity, with the given sequence
        /// number; returns its length.
        let request: @Sendable (UnsafeMutableRawPointer?, Int, UInt32) -> Int
        /// Decodes one reply message (payload and length) into the table; skips what it cannot decode.
        let decode: @Sendable (UnsafeRawPointer, UInt32, inout SocketTable) -> Void

        /// A dump whose reply messages the C `decoder` turns into flat `Raw` records (returning
        /// 0 when it could), which `convert` makes model values for the table's `list`.
        init<Raw, Value>(name: String, request: @escaping @Sendable (UnsafeMutableRawPointer?, Int, UInt32) -> Int,
                         decoder: @escaping @Sendable (UnsafeRawPointer?, UInt32, UnsafeMutablePointer<Raw>?) -> Int32,
                         list: WritableKeyPath<SocketTable, [Value]> & Sendable, convert: @escaping @Sendable (Raw) -> Value) {
            self.name = name
            self.request = request
            decode = { payload, length, table in
                withUnsafeTemporaryAllocation(of: Raw.self, capacity: 1) { raw in
                    guard decoder(payload, length, raw.baseAddress) == 0 else { return }
                    table[keyPath: list].append(convert(raw[0]))
                }
            }
        }
    }

    /// Sends one dump request and decodes every reply message until NLMSG_DONE. Returns false
    /// when the kernel has no handler for the family (its diag module is not loaded).
    private func dump(_ family: Dump, into table: inout SocketTable) throws(MitosisError) -> Bool {
        let what = family.name
        sequence &+= 1
        let length = family.request(buffer.baseAddress, buffer.count, sequence)
        do {
            try Kernel.netlinkSend(socket, UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
            while true {
                let received = try Kernel.netlinkReceive(socket, into: buffer)
                var cursor = mitosis_nl_cursor(position: buffer.baseAddress?.assumingMemoryBound(to: UInt8.self), remaining: received)
                var type: UInt16 = 0, messageSequence: UInt32 = 0, length: UInt32 = 0
                var payload: UnsafeRawPointer?
                while true {
                    let step = mitosis_nl_next(&cursor, &type, &messageSequence, &payload, &length)
                    if step == 0 { break }
                    guard step == 1, let payload else {
                        throw MitosisError.system(operation: "sock_diag \(what) dump (malformed reply)", errno: .badMessage)
                    }
                    if messageSequence != sequence { continue }
                    switch type {
                    case MITOSIS_NLMSG_DONE:
                        return true
                    case MITOSIS_NLMSG_ERROR:
                        let code = mitosis_nl_error(payload, length)
                        if code == 0 { continue }
                        if code == -ENOENT || code == -EOPNOTSUPP { return false }
                        throw MitosisError.system(operation: "sock_diag \(what) dump", errno: Errno(rawValue: -code))
                    default:
                        family.decode(payload, length, &table)
                    }
                }
            }
        } catch let error as MitosisError {
            throw error
        } catch let error as Errno {
            throw .system(operation: "sock_diag \(what) dump", errno: error)
        } catch {
            throw .system(operation: "sock_diag \(what) dump", errno: .ioError)
        }
    }

    /// The name of a socket type (`SOCK_STREAM`…), as UNIX and packet sockets report it.
    package static func socketTypeName(_ type: UInt8) -> String {
        switch Int32(type) {
        case Int32(SOCK_STREAM.rawValue): return "stream"
        case Int32(SOCK_DGRAM.rawValue): return "dgram"
        case Int32(SOCK_RAW.rawValue): return "raw"
        case Int32(SOCK_SEQPACKET.rawValue): return "seqpacket"
        default: return "type-\(type)"
        }
    }
}
