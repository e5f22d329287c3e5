import CMitosis
import Glibc
import MitosisModel
import SystemPackage

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

/// A packet socket's binding, read and made again through a descriptor of it.
extension Kernel {
    /// What `fd`, an `AF_PACKET` socket, is bound to: `getsockname`'s interface index and
    /// protocol, the interface's name in the socket's own network namespace (`SIOCGIFNAME` on
    /// the socket), whether a ring is set up — `PACKET_VERSION` set again to its own value
    /// fails with `EBUSY` only then, and changes nothing otherwise — and `PACKET_FANOUT`.
    /// The corresponding system calls are `getsockname`, `ioctl(SIOCGIFNAME)`, `setsockopt`, `getsockopt`.
    package static func packetBinding(_ fd: FileDescriptor) throws(Errno) -> PacketBinding {
        var address = sockaddr_ll()
        var length = socklen_t(MemoryLayout<sockaddr_ll>.size)
        try check { withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd.rawValue, $0, &length) } } }
        var name: String?
        if address.sll_ifindex != 0 {
            var request = ifreq()
            request.ifr_ifru.ifru_ivalue = address.sll_ifindex
            if ioctl(fd.rawValue, UInt(SIOCGIFNAME), &request) == 0 {
                name = withUnsafeBytes(of: request.ifr_ifrn.ifrn_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            }
        }
        let version = try socketOption(fd, level: 263, name: 10 /* PACKET_VERSION */)
        var ring = false
        if setsockopt(fd.rawValue, 263, 10, [version], socklen_t(4)) != 0 {
            guard errno == EBUSY else { throw Errno(rawValue: errno) }
            ring = true
        }
        let fanout = UInt32(bitPattern: try socketOption(fd, level: 263, name: 18 /* PACKET_FANOUT */))
        return PacketBinding(interfaceIndex: address.sll_ifindex, interface: name, protocolNumber: address.sll_protocol,
                             ring: ring, fanout: fanout)
    }

    /// The index of the interface called `name` in the network namespace of socket `fd`.
    /// The corresponding system call is `ioctl(SIOCGIFINDEX)`.
    package static func interfaceIndex(_ fd: FileDescriptor, name: String) throws(Errno) -> Int32 {
        var request = ifreq()
        let bytes = Array(name.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: request.ifr_ifrn.ifrn_name) else { throw .invalidArgument }
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { $0.copyBytes(from: bytes) }
        try check { ioctl(fd.rawValue, UInt(SIOCGIFINDEX), &request) }
        return request.ifr_ifru.ifru_ivalue
    }

    /// A `sockaddr_ll` for `bind`: family `AF_PACKET`, protocol (network byte order), interface.
    package static func packetAddress(protocolNumber: UInt16, interfaceIndex: Int32) -> [UInt8] {
        var address = sockaddr_ll()
        address.sll_family = UInt16(AF_PACKET)
        address.sll_protocol = protocolNumber
        address.sll_ifindex = interfaceIndex
        return withUnsafeBytes(of: address) { Array($0) }
    }
}
