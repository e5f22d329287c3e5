// NETLINK_SOCK_DIAG requests, built in C because Swift does not guarantee struct layout, and
// responses decoded here into flat structs because the NLMSG_* / RTA_* walkers are macros.
#ifndef MITOSIS_NETLINK_H
#define MITOSIS_NETLINK_H
#include <stdint.h>
#include <netpacket/packet.h>  // sockaddr_ll, for binding packet sockets
#include <stddef.h>

static const int MITOSIS_NETLINK_SOCK_DIAG = 4;
/// setns(2) type of a network namespace (CLONE_NEWNET needs _GNU_SOURCE).
static const int MITOSIS_CLONE_NEWNET = 0x40000000;
static const uint16_t MITOSIS_NLMSG_ERROR = 2;
static const uint16_t MITOSIS_NLMSG_DONE = 3;
static const uint16_t MITOSIS_SOCK_DIAG_BY_FAMILY = 20;

/// Writes a dump request for AF_INET/AF_INET6 sockets of `protocol` (IPPROTO_TCP, IPPROTO_UDP)
/// in every state into `buffer`; returns its length, or 0 when `capacity` is too small.
size_t mitosis_sockdiag_inet_request(void *buffer, size_t capacity, uint8_t family, uint8_t protocol, uint32_t sequence);
/// A dump request for every AF_UNIX socket, with name, peer, pending connections, queue
/// lengths and uid.
size_t mitosis_sockdiag_unix_request(void *buffer, size_t capacity, uint32_t sequence);
/// A dump request for every AF_NETLINK socket.
size_t mitosis_sockdiag_netlink_request(void *buffer, size_t capacity, uint32_t sequence);
/// A dump request for every AF_PACKET socket, with interface and uid.
size_t mitosis_sockdiag_packet_request(void *buffer, size_t capacity, uint32_t sequence);

/// Walks the netlink messages of one received datagram.
typedef struct mitosis_nl_cursor {
    const uint8_t *position;
    size_t remaining;
} mitosis_nl_cursor;

/// The next message: 1 with its type, sequence number and payload; 0 at the end; -1 when the
/// datagram is truncated or malformed.
int mitosis_nl_next(mitosis_nl_cursor *cursor, uint16_t *type, uint32_t *sequence,
                    const void **payload, uint32_t *payload_length);
/// The (negative) errno of an NLMSG_ERROR payload, 0 for an acknowledgement.
int mitosis_nl_error(const void *payload, uint32_t length);

/// One inet_diag_msg with its attributes. Ports in host order; addresses as the kernel sent them
/// (network order bytes; 4 used for AF_INET).
typedef struct mitosis_inet_socket {
    uint8_t family;
    uint8_t state;
    uint8_t timer;
    uint8_t retransmits;
    uint16_t local_port;
    uint16_t remote_port;
    uint8_t local_address[16];
    uint8_t remote_address[16];
    uint32_t interface;
    uint64_t cookie;
    uint32_t expires;
    uint32_t receive_queue;
    uint32_t send_queue;
    uint32_t uid;
    uint32_t inode;
    /// SHUTDOWN attribute (bit 0: no more receives, bit 1: no more sends), -1 when absent.
    int32_t shutdown;
    /// SKV6ONLY attribute for AF_INET6 sockets, -1 when absent.
    int32_t v6only;
} mitosis_inet_socket;

/// One unix_diag_msg with its attributes.
typedef struct mitosis_unix_socket {
    uint8_t type;
    uint8_t state;
    uint32_t inode;
    uint64_t cookie;
    /// Length of `name` (abstract names start with a NUL byte), -1 when the socket is unbound.
    int32_t name_length;
    char name[108];
    /// Peer inode when `has_peer`; 0 for a peer no descriptor holds yet (not accept()ed).
    uint32_t peer;
    int32_t has_peer;
    /// RQLEN attribute: for a listener, pending connections and backlog; otherwise the queues. -1 when absent.
    int64_t receive_queue;
    int64_t send_queue;
    /// Inodes of connections waiting in accept() (listeners only), pointing into the datagram.
    const uint32_t *pending;
    uint32_t pending_count;
    /// SHUTDOWN attribute, -1 when absent.
    int32_t shutdown;
    /// UID attribute, -1 when absent.
    int64_t uid;
} mitosis_unix_socket;

/// One netlink_diag_msg.
typedef struct mitosis_netlink_socket {
    uint8_t type;
    uint8_t protocol;
    uint8_t state;
    uint32_t port_id;
    uint32_t destination_port_id;
    uint32_t destination_group;
    uint32_t inode;
    uint64_t cookie;
} mitosis_netlink_socket;

/// One packet_diag_msg with its attributes.
typedef struct mitosis_packet_socket {
    uint8_t type;
    uint16_t protocol;
    uint32_t inode;
    uint64_t cookie;
    /// Bound interface index from PACKET_DIAG_INFO, -1 when absent.
    int64_t interface;
    /// PACKET_DIAG_UID, -1 when absent.
    int64_t uid;
} mitosis_packet_socket;

/// Decoders of one SOCK_DIAG_BY_FAMILY payload; 0 on success, -1 when it is too short.
int mitosis_decode_inet(const void *payload, uint32_t length, mitosis_inet_socket *out);
int mitosis_decode_unix(const void *payload, uint32_t length, mitosis_unix_socket *out);
int mitosis_decode_netlink(const void *payload, uint32_t length, mitosis_netlink_socket *out);
int mitosis_decode_packet(const void *payload, uint32_t length, mitosis_packet_socket *out);

#endif
