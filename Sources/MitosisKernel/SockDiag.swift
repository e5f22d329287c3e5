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
        for (family, name) in [(AF_INET, InetFamily.ipv4), (AF_INET6, .ipv6)] {
            for (proto, protoName) in [(IPPROTO_TCP, InetProtocol.tcp), (IPPROTO_UDP, .udp)] {
                let found = try dump("\(protoName.rawValue)/\(name.rawValue)", into: &table) { buffer, capacity, sequence in
                    mitosis_sockdiag_inet_request(buffer, capacity, UInt8(family), UInt8(proto), sequence)
                } decode: { payload, length, table in
                    var raw = mitosis_inet_socket()
                    guard mitosis_decode_inet(payload, length, &raw) == 0 else { return }
                    table.inet.append(Self.inetSocket(raw, protocol: protoName, family: name))
                }
                if !found { table.unavailable.append("\(protoName.rawValue)/\(name.rawValue)") }
            }
        }
        if !(try dump("unix", into: &table, request: mitosis_sockdiag_unix_request) { payload, length, table in
            var raw = mitosis_unix_socket()
            guard mitosis_decode_unix(payload, length, &raw) == 0 else { return }
            table.unix.append(Self.unixSocket(raw))
        }) { table.unavailable.append("unix") }
        if !(try dump("netlink", into: &table, request: mitosis_sockdiag_netlink_request) { payload, length, table in
            var raw = mitosis_netlink_socket()
            guard mitosis_decode_netlink(payload, length, &raw) == 0 else { return }
            table.netlink.append(Self.netlinkSocket(raw))
        }) { table.unavailable.append("netlink") }
        if !(try dump("packet", into: &table, request: mitosis_sockdiag_packet_request) { payload, length, table in
            var raw = mitosis_packet_socket()
            guard mitosis_decode_packet(payload, length, &raw) == 0 else { return }
            table.packet.append(Self.packetSocket(raw))
        }) { table.unavailable.append("packet") }
        return table
    }

    /// Sends one dump request and decodes every reply message until NLMSG_DONE. Returns false
    /// when the kernel has no handler for the family (its diag module is not loaded).
    private func dump(
        _ what: String, into table: inout SocketTable,
        request: (UnsafeMutableRawPointer?, Int, UInt32) -> Int,
        decode: (UnsafeRawPointer, UInt32, inout SocketTable) -> Void
    ) throws(MitosisError) -> Bool {
        sequence &+= 1
        let length = request(buffer.baseAddress, buffer.count, sequence)
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
                        decode(payload, length, &table)
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

    // MARK: Decoding the flat C records

    package static func inetSocket(_ raw: mitosis_inet_socket, protocol proto: InetProtocol, family: InetFamily) -> InetSocket {
        var raw = raw
        let isV6 = raw.family == UInt8(AF_INET6)
        let local = withUnsafeBytes(of: &raw.local_address) { formatAddress($0, v6: isV6) }
        let remote = withUnsafeBytes(of: &raw.remote_address) { formatAddress($0, v6: isV6) }
        return InetSocket(
            protocol: proto, family: family,
            state: SocketState.name(raw.state, connectionOriented: proto.isConnectionOriented),
            local: SocketEndpoint(address: local, port: raw.local_port),
            remote: SocketEndpoint(address: remote, port: raw.remote_port),
            receiveQueue: raw.receive_queue, sendQueue: raw.send_queue, uid: raw.uid,
            inode: UInt64(raw.inode), cookie: raw.cookie, interface: raw.interface,
            shutdown: SocketShutdown(mask: max(raw.shutdown, 0)),
            v6Only: raw.v6only < 0 ? nil : raw.v6only != 0)
    }

    package static func unixSocket(_ raw: mitosis_unix_socket) -> UnixSocket {
        var raw = raw
        var name: String?
        var abstract = false
        if raw.name_length > 0 {
            let bytes = withUnsafeBytes(of: &raw.name) { Array($0.prefix(Int(raw.name_length))) }
            if bytes[0] == 0 {
                abstract = true
                name = "@" + String(decoding: bytes.dropFirst(), as: UTF8.self)
            } else {
                name = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        let pending = raw.pending.map { Array(UnsafeBufferPointer(start: $0, count: Int(raw.pending_count))).map(UInt64.init) } ?? []
        return UnixSocket(
            type: socketTypeName(raw.type),
            state: SocketState.name(raw.state, connectionOriented: false),
            inode: UInt64(raw.inode), cookie: raw.cookie, name: name, abstract: abstract,
            peerInode: raw.has_peer != 0 ? UInt64(raw.peer) : nil, pendingConnections: pending,
            receiveQueue: raw.receive_queue < 0 ? nil : UInt32(raw.receive_queue),
            sendQueue: raw.send_queue < 0 ? nil : UInt32(raw.send_queue),
            shutdown: SocketShutdown(mask: max(raw.shutdown, 0)),
            uid: raw.uid < 0 ? nil : UInt32(raw.uid))
    }

    package static func netlinkSocket(_ raw: mitosis_netlink_socket) -> NetlinkSocket {
        NetlinkSocket(
            protocol: netlinkProtocolName(raw.protocol), portID: raw.port_id,
            destinationPortID: raw.destination_port_id, destinationGroup: raw.destination_group,
            state: raw.state == 1 ? "ESTABLISHED" : "UNCONN", inode: UInt64(raw.inode), cookie: raw.cookie)
    }

    package static func packetSocket(_ raw: mitosis_packet_socket) -> PacketSocket {
        PacketSocket(
            type: socketTypeName(raw.type), ethernetProtocol: raw.protocol,
            interface: raw.interface < 0 ? nil : UInt32(raw.interface), uid: raw.uid < 0 ? nil : UInt32(raw.uid),
            inode: UInt64(raw.inode), cookie: raw.cookie)
    }

    /// An IPv4 (first 4 bytes) or IPv6 address in its usual text form.
    package static func formatAddress(_ bytes: UnsafeRawBufferPointer, v6: Bool) -> String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.baseAddress, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    package static func socketTypeName(_ type: UInt8) -> String {
        switch Int32(type) {
        case Int32(SOCK_STREAM.rawValue): return "stream"
        case Int32(SOCK_DGRAM.rawValue): return "dgram"
        case Int32(SOCK_RAW.rawValue): return "raw"
        case Int32(SOCK_SEQPACKET.rawValue): return "seqpacket"
        default: return "type-\(type)"
        }
    }

    package static func netlinkProtocolName(_ number: UInt8) -> String {
        let names: [UInt8: String] = [
            0: "route", 2: "usersock", 3: "firewall", 4: "sock_diag", 5: "nflog", 6: "xfrm", 7: "selinux",
            8: "iscsi", 9: "audit", 10: "fib_lookup", 11: "connector", 12: "netfilter", 13: "ip6_fw",
            14: "dnrtmsg", 15: "kobject_uevent", 16: "generic", 18: "scsitransport", 19: "ecryptfs",
            20: "rdma", 21: "crypto", 22: "smc",
        ]
        return names[number] ?? String(number)
    }
}
