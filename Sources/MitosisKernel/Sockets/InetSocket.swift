import CMitosis
import Glibc
import MitosisModel

/// TCP and UDP sockets over IPv4 and IPv6 (`inet_diag`): four dumps, one per family and protocol.
extension SockDiag {
    static let inetDumps: [Dump] = [(AF_INET, InetFamily.ipv4), (AF_INET6, .ipv6)].flatMap { family, familyName in
        [(IPPROTO_TCP, InetProtocol.tcp), (IPPROTO_UDP, .udp)].map { proto, protoName in
            Dump(name: "\(protoName.rawValue)/\(familyName.rawValue)", request: { buffer, capacity, sequence in
                mitosis_sockdiag_inet_request(buffer, capacity, UInt8(family), UInt8(proto), sequence)
            }, decoder: mitosis_decode_inet, list: \.inet) { inetSocket($0, protocol: protoName, family: familyName) }
        }
    }

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

    /// An IPv4 (first 4 bytes) or IPv6 address in its usual text form.
    package static func formatAddress(_ bytes: UnsafeRawBufferPointer, v6: Bool) -> String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.baseAddress, &text, socklen_t(text.count)) != nil else { return "?" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
