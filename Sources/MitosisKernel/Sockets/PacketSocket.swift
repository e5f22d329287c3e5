import CMitosis
import MitosisModel

/// Packet sockets (`packet_diag`): raw access to network interfaces.
extension SockDiag {
    static let packetDump = Dump(name: "packet", request: mitosis_sockdiag_packet_request, decoder: mitosis_decode_packet,
                                 list: \.packet, convert: packetSocket)

    package static func packetSocket(_ raw: mitosis_packet_socket) -> PacketSocket {
        PacketSocket(
            type: socketTypeName(raw.type), ethernetProtocol: raw.protocol,
            interface: raw.interface < 0 ? nil : UInt32(raw.interface), uid: raw.uid < 0 ? nil : UInt32(raw.uid),
            inode: UInt64(raw.inode), cookie: raw.cookie)
    }
}
