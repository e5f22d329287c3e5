import CMitosis
import MitosisModel

/// Netlink sockets (`netlink_diag`): protocol, port ids, groups.
extension SockDiag {
    static let netlinkDump = Dump(name: "netlink", request: mitosis_sockdiag_netlink_request, decoder: mitosis_decode_netlink,
                                  list: \.netlink, convert: netlinkSocket)

    package static func netlinkSocket(_ raw: mitosis_netlink_socket) -> NetlinkSocket {
        NetlinkSocket(
            protocol: netlinkProtocolName(raw.protocol), portID: raw.port_id,
            destinationPortID: raw.destination_port_id, destinationGroup: raw.destination_group,
            state: raw.state == 1 ? "ESTABLISHED" : "UNCONN", inode: UInt64(raw.inode), cookie: raw.cookie)
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
