#include "mitosis_netlink.h"
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>
#include <linux/unix_diag.h>
#include <linux/netlink_diag.h>
#include <linux/packet_diag.h>

/// Lays out nlmsghdr + `request` in `buffer` as a SOCK_DIAG_BY_FAMILY dump.
static size_t build(void *buffer, size_t capacity, const void *request, size_t request_length, uint32_t sequence) {
    size_t total = NLMSG_LENGTH(request_length);
    if (capacity < total) return 0;
    memset(buffer, 0, total);
    struct nlmsghdr *header = buffer;
    header->nlmsg_len = (uint32_t)total;
    header->nlmsg_type = SOCK_DIAG_BY_FAMILY;
    header->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    header->nlmsg_seq = sequence;
    memcpy(NLMSG_DATA(header), request, request_length);
    return total;
}

size_t mitosis_sockdiag_inet_request(void *buffer, size_t capacity, uint8_t family, uint8_t protocol, uint32_t sequence) {
    struct inet_diag_req_v2 request;
    memset(&request, 0, sizeof request);
    request.sdiag_family = family;
    request.sdiag_protocol = protocol;
    request.idiag_states = ~0U;
    return build(buffer, capacity, &request, sizeof request, sequence);
}

size_t mitosis_sockdiag_unix_request(void *buffer, size_t capacity, uint32_t sequence) {
    struct unix_diag_req request;
    memset(&request, 0, sizeof request);
    request.sdiag_family = AF_UNIX;
    request.udiag_states = ~0U;
    request.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN | UDIAG_SHOW_UID;
    return build(buffer, capacity, &request, sizeof request, sequence);
}

size_t mitosis_sockdiag_netlink_request(void *buffer, size_t capacity, uint32_t sequence) {
    struct netlink_diag_req request;
    memset(&request, 0, sizeof request);
    request.sdiag_family = AF_NETLINK;
    request.sdiag_protocol = NDIAG_PROTO_ALL;
    return build(buffer, capacity, &request, sizeof request, sequence);
}

size_t mitosis_sockdiag_packet_request(void *buffer, size_t capacity, uint32_t sequence) {
    struct packet_diag_req request;
    memset(&request, 0, sizeof request);
    request.sdiag_family = AF_PACKET;
    request.pdiag_show = PACKET_SHOW_INFO;
    return build(buffer, capacity, &request, sizeof request, sequence);
}

int mitosis_nl_next(mitosis_nl_cursor *cursor, uint16_t *type, uint32_t *sequence,
                    const void **payload, uint32_t *payload_length) {
    if (cursor->remaining == 0) return 0;
    const struct nlmsghdr *header = (const struct nlmsghdr *)cursor->position;
    int remaining = (int)cursor->remaining;
    if (!NLMSG_OK(header, remaining)) return -1;
    *type = header->nlmsg_type;
    *sequence = header->nlmsg_seq;
    *payload = NLMSG_DATA(header);
    *payload_length = (uint32_t)NLMSG_PAYLOAD(header, 0);
    header = NLMSG_NEXT(header, remaining);
    cursor->position = (const uint8_t *)header;
    cursor->remaining = remaining > 0 ? (size_t)remaining : 0;
    return 1;
}

int mitosis_nl_error(const void *payload, uint32_t length) {
    if (length < sizeof(struct nlmsgerr)) return -1;
    return ((const struct nlmsgerr *)payload)->error;
}

static uint64_t cookie(const uint32_t parts[2]) {
    return (uint64_t)parts[0] | ((uint64_t)parts[1] << 32);
}

/// Iterates the rtattr list that follows a fixed header of `fixed` bytes.
#define EACH_ATTRIBUTE(payload, length, fixed, attribute)                                  \
    int attributes_left = (int)(length) - (int)NLMSG_ALIGN(fixed);                         \
    for (const struct rtattr *attribute =                                                   \
             (const struct rtattr *)((const uint8_t *)(payload) + NLMSG_ALIGN(fixed));      \
         attributes_left > 0 && RTA_OK(attribute, attributes_left);                         \
         attribute = RTA_NEXT(attribute, attributes_left))

int mitosis_decode_inet(const void *payload, uint32_t length, mitosis_inet_socket *out) {
    if (length < sizeof(struct inet_diag_msg)) return -1;
    const struct inet_diag_msg *message = payload;
    memset(out, 0, sizeof *out);
    out->family = message->idiag_family;
    out->state = message->idiag_state;
    out->timer = message->idiag_timer;
    out->retransmits = message->idiag_retrans;
    out->local_port = ntohs(message->id.idiag_sport);
    out->remote_port = ntohs(message->id.idiag_dport);
    memcpy(out->local_address, message->id.idiag_src, 16);
    memcpy(out->remote_address, message->id.idiag_dst, 16);
    out->interface = message->id.idiag_if;
    out->cookie = cookie(message->id.idiag_cookie);
    out->expires = message->idiag_expires;
    out->receive_queue = message->idiag_rqueue;
    out->send_queue = message->idiag_wqueue;
    out->uid = message->idiag_uid;
    out->inode = message->idiag_inode;
    out->shutdown = -1;
    out->v6only = -1;
    EACH_ATTRIBUTE(payload, length, sizeof *message, attribute) {
        if (RTA_PAYLOAD(attribute) < 1) continue;
        uint8_t value = *(const uint8_t *)RTA_DATA(attribute);
        if (attribute->rta_type == INET_DIAG_SHUTDOWN) out->shutdown = value;
        if (attribute->rta_type == INET_DIAG_SKV6ONLY) out->v6only = value;
    }
    return 0;
}

int mitosis_decode_unix(const void *payload, uint32_t length, mitosis_unix_socket *out) {
    if (length < sizeof(struct unix_diag_msg)) return -1;
    const struct unix_diag_msg *message = payload;
    memset(out, 0, sizeof *out);
    out->type = message->udiag_type;
    out->state = message->udiag_state;
    out->inode = message->udiag_ino;
    out->cookie = cookie(message->udiag_cookie);
    out->name_length = -1;
    out->receive_queue = -1;
    out->send_queue = -1;
    out->shutdown = -1;
    out->uid = -1;
    EACH_ATTRIBUTE(payload, length, sizeof *message, attribute) {
        size_t size = RTA_PAYLOAD(attribute);
        const void *data = RTA_DATA(attribute);
        switch (attribute->rta_type) {
        case UNIX_DIAG_NAME:
            if (size > sizeof out->name) size = sizeof out->name;
            memcpy(out->name, data, size);
            out->name_length = (int32_t)size;
            break;
        case UNIX_DIAG_PEER:
            if (size >= 4) memcpy(&out->peer, data, 4);
            out->has_peer = 1;
            break;
        case UNIX_DIAG_ICONS:
            out->pending = data;
            out->pending_count = (uint32_t)(size / 4);
            break;
        case UNIX_DIAG_RQLEN:
            if (size >= sizeof(struct unix_diag_rqlen)) {
                const struct unix_diag_rqlen *queues = data;
                out->receive_queue = queues->udiag_rqueue;
                out->send_queue = queues->udiag_wqueue;
            }
            break;
        case UNIX_DIAG_SHUTDOWN:
            if (size >= 1) out->shutdown = *(const uint8_t *)data;
            break;
        case UNIX_DIAG_UID:
            if (size >= 4) out->uid = *(const uint32_t *)data;
            break;
        }
    }
    return 0;
}

int mitosis_decode_netlink(const void *payload, uint32_t length, mitosis_netlink_socket *out) {
    if (length < sizeof(struct netlink_diag_msg)) return -1;
    const struct netlink_diag_msg *message = payload;
    memset(out, 0, sizeof *out);
    out->type = message->ndiag_type;
    out->protocol = message->ndiag_protocol;
    out->state = message->ndiag_state;
    out->port_id = message->ndiag_portid;
    out->destination_port_id = message->ndiag_dst_portid;
    out->destination_group = message->ndiag_dst_group;
    out->inode = message->ndiag_ino;
    out->cookie = cookie(message->ndiag_cookie);
    return 0;
}

int mitosis_decode_packet(const void *payload, uint32_t length, mitosis_packet_socket *out) {
    if (length < sizeof(struct packet_diag_msg)) return -1;
    const struct packet_diag_msg *message = payload;
    memset(out, 0, sizeof *out);
    out->type = message->pdiag_type;
    out->protocol = message->pdiag_num;  // the kernel already converted it to host order
    out->inode = message->pdiag_ino;
    out->cookie = cookie(message->pdiag_cookie);
    out->interface = -1;
    out->uid = -1;
    EACH_ATTRIBUTE(payload, length, sizeof *message, attribute) {
        if (attribute->rta_type == PACKET_DIAG_INFO && RTA_PAYLOAD(attribute) >= sizeof(struct packet_diag_info))
            out->interface = ((const struct packet_diag_info *)RTA_DATA(attribute))->pdi_index;
        if (attribute->rta_type == PACKET_DIAG_UID && RTA_PAYLOAD(attribute) >= 4)
            out->uid = *(const uint32_t *)RTA_DATA(attribute);
    }
    return 0;
}
