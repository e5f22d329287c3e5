// `packetsock NETNS IFNAME PEER MODE`: a self-checking process holding packet (AF_PACKET)
// sockets, for restore tests. It first enters the network namespace at the path NETNS, where the
// test made IFNAME and PEER the two ends of a veth pair.
//
// 20 a SOCK_DGRAM packet socket created for ETH_P_IP, PACKET_VERSION TPACKET_V2, PACKET_AUXDATA
//    on, bound to IFNAME for the ethertype 0x88b5.
// 21 a SOCK_RAW packet socket for ETH_P_ALL, non-blocking, bound to no interface.
// MODE `ring`: 22 a SOCK_RAW packet socket with a PACKET_RX_RING (never mapped);
// MODE `fanout`: 22 a SOCK_RAW packet socket bound to IFNAME in PACKET_FANOUT group 77 (hash).
// MODE `plain`: nothing more.
// The check verifies each socket's type, binding (the interface by name, wherever it is now
// numbered), options and flags, then sends an 0x88b5 frame carrying "mitosis-PID" on PEER and
// receives it on 20 (within 2 s).
#define _GNU_SOURCE
#include "scenario.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static char ifname[IF_NAMESIZE], peername[IF_NAMESIZE];

static int place(int fd, int wanted) {
    if (fd == wanted) return 0;
    if (dup2(fd, wanted) != wanted) return -1;
    close(fd);
    return 0;
}

static int bind_to(int fd, const char *name, unsigned short protocol) {
    struct sockaddr_ll address = { .sll_family = AF_PACKET, .sll_protocol = htons(protocol) };
    address.sll_ifindex = name ? (int)if_nametoindex(name) : 0;
    if (name && address.sll_ifindex == 0) return -1;
    return bind(fd, (struct sockaddr *)&address, sizeof address);
}

static int packet_setup(int argc, char **argv) {
    if (argc < 4) return -1;
    int ns = open(argv[0], O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) return -1;
    close(ns);
    snprintf(ifname, sizeof ifname, "%s", argv[1]);
    snprintf(peername, sizeof peername, "%s", argv[2]);
    int one = 1, v2 = TPACKET_V2;
    int fd = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    if (fd < 0 || place(fd, 20) || setsockopt(20, SOL_PACKET, PACKET_VERSION, &v2, sizeof v2)
        || setsockopt(20, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one) || bind_to(20, ifname, 0x88b5)) return -1;
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0 || place(fd, 21)) return -1;
    if (strcmp(argv[3], "ring") == 0) {
        struct tpacket_req request = { .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 2 };
        fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        if (fd < 0 || place(fd, 22) || setsockopt(22, SOL_PACKET, PACKET_VERSION, &v2, sizeof v2)
            || setsockopt(22, SOL_PACKET, PACKET_RX_RING, &request, sizeof request)) return -1;
    } else if (strcmp(argv[3], "fanout") == 0) {
        int fanout = 77 | PACKET_FANOUT_HASH << 16;
        fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        if (fd < 0 || place(fd, 22) || bind_to(22, ifname, ETH_P_ALL) || setsockopt(22, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof fanout)) return -1;
    }
    scenario_report("ifindex", "%u", if_nametoindex(ifname));
    return 0;
}

#define FAIL(...) do { snprintf(problem, size, __VA_ARGS__); goto out; } while (0)

static int packet_check(char *problem, size_t size) {
    int result = -1, sender = -1;
    int value = 0;
    socklen_t length = sizeof value;
    struct sockaddr_ll address;
    socklen_t address_length = sizeof address;
    if (getsockopt(20, SOL_SOCKET, SO_TYPE, &value, &length) || value != SOCK_DGRAM) FAIL("20-type=%d", value);
    if (getsockname(20, (struct sockaddr *)&address, &address_length)) FAIL("20-getsockname");
    if (address.sll_ifindex != (int)if_nametoindex(ifname)) FAIL("20-ifindex=%d,%s-is-%u", address.sll_ifindex, ifname, if_nametoindex(ifname));
    if (address.sll_protocol != htons(0x88b5)) FAIL("20-protocol=0x%x", ntohs(address.sll_protocol));
    length = sizeof value;
    if (getsockopt(20, SOL_PACKET, PACKET_VERSION, &value, &length) || value != TPACKET_V2) FAIL("20-version=%d", value);
    length = sizeof value;
    if (getsockopt(20, SOL_PACKET, PACKET_AUXDATA, &value, &length) || value != 1) FAIL("20-auxdata=%d", value);
    length = sizeof value;
    if (getsockopt(21, SOL_SOCKET, SO_TYPE, &value, &length) || value != SOCK_RAW) FAIL("21-type=%d", value);
    address_length = sizeof address;
    if (getsockname(21, (struct sockaddr *)&address, &address_length) || address.sll_ifindex != 0 || address.sll_protocol != htons(ETH_P_ALL))
        FAIL("21-binding=%d/0x%x", address.sll_ifindex, ntohs(address.sll_protocol));
    if ((fcntl(21, F_GETFL) & O_NONBLOCK) == 0) FAIL("21-blocking");

    // A frame sent on the peer arrives on 20.
    sender = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (sender < 0) FAIL("sender");
    struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(0x88b5), .sll_ifindex = (int)if_nametoindex(peername), .sll_halen = 6 };
    memset(to.sll_addr, 0xff, 6);
    unsigned char frame[64] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5 };
    char payload[32];
    int n = snprintf(payload, sizeof payload, "mitosis-%d", getpid());
    memcpy(frame + 14, payload, n);
    if (sendto(sender, frame, 14 + n, 0, (struct sockaddr *)&to, sizeof to) != 14 + n) FAIL("send-on-%s:%d", peername, errno);
    for (int attempt = 0;; attempt++) {
        struct pollfd wait = { .fd = 20, .events = POLLIN };
        if (poll(&wait, 1, 2000) != 1) FAIL("nothing-received-on-20");
        char got[128];
        ssize_t r = recv(20, got, sizeof got, 0);
        if (r >= n && memcmp(got, payload, n) == 0) break;
        if (attempt > 20) FAIL("20-received-other-frames");
    }
    result = 0;
out:
    if (sender >= 0) close(sender);
    return result;
}

SCENARIO_CHECKED(packetsock, packet_setup, NULL, packet_check)
