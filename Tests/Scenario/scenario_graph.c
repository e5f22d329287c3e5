// Scenarios for sockets and the resource graph. Each reports the inodes, fds and ports a test
// asserts. Forked children die with their parent (PR_SET_PDEATHSIG) and hold only the
// descriptors named in the facts.
#define _GNU_SOURCE
#include "scenario.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static unsigned long inode_of(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) scenario_fail("fstat %d: %d", fd, errno);
    return (unsigned long)st.st_ino;
}

/// Forks a child that dies with this process, keeps only `keep` (count fds), and pauses.
// Forks a child that keeps only the descriptors in `keep` and pauses. Returns once the child has
// closed the others, so that a graph taken after READY sees exactly what the child holds.
static pid_t fork_holder(const int *keep, int count) {
    pid_t parent = getpid();
    int done[2];
    if (pipe2(done, O_CLOEXEC) != 0) scenario_fail("pipe2: %d", errno);
    pid_t child = fork();
    if (child < 0) scenario_fail("fork: %d", errno);
    if (child > 0) {
        close(done[1]);
        char byte;
        // EOF: the child has closed its write end, last of all its descriptors.
        while (read(done[0], &byte, 1) < 0 && errno == EINTR) {}
        close(done[0]);
        return child;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    for (int fd = 0; fd < 1024; fd++) {
        int kept = fd == done[1];
        for (int i = 0; i < count; i++) kept |= keep[i] == fd;
        if (!kept) close(fd);
    }
    close(done[1]);
    for (;;) pause();
}

static int tcp_listener(int family, const char *address, int port) {
    int fd = socket(family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage storage;
    memset(&storage, 0, sizeof storage);
    socklen_t length;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&storage;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        inet_pton(AF_INET, address, &in->sin_addr);
        length = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&storage;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        inet_pton(AF_INET6, address, &in6->sin6_addr);
        length = sizeof *in6;
    }
    if (bind(fd, (struct sockaddr *)&storage, length) != 0) scenario_fail("bind %s:%d: %d", address, port, errno);
    if (listen(fd, 16) != 0) scenario_fail("listen: %d", errno);
    return fd;
}

static int local_port(int fd) {
    struct sockaddr_storage storage;
    socklen_t length = sizeof storage;
    getsockname(fd, (struct sockaddr *)&storage, &length);
    return storage.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&storage)->sin_port)
                                        : ntohs(((struct sockaddr_in6 *)&storage)->sin6_port);
}

static int tcp_connect(const char *address, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, address, &in.sin_addr);
    if (connect(fd, (struct sockaddr *)&in, sizeof in) != 0) scenario_fail("connect %s:%d: %d", address, port, errno);
    return fd;
}

// `sockets`: one of each kind sock_diag reports. fds: 3 TCP listener 127.0.0.1, 4 TCP listener
// [::1], 5 UDP 127.0.0.1 (unconnected), 6 UNIX listener on an abstract name, 7 a client
// connected to it and never accepted, 8/9 a UNIX stream pair with 8 shut down for writing,
// 10 UNIX dgram bound to a path (the test removes it), 11 netlink route, 12 packet (raw, ETH_P_ALL).
static int sockets_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    int tcp4 = tcp_listener(AF_INET, "127.0.0.1", 0);
    int tcp6 = tcp_listener(AF_INET6, "::1", 0);
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in in = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
    if (bind(udp, (struct sockaddr *)&in, sizeof in) != 0) return -1;
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    int name_length = snprintf(un.sun_path + 1, sizeof un.sun_path - 1, "mitosis-%d", getpid());
    socklen_t un_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + name_length);
    if (bind(listener, (struct sockaddr *)&un, un_length) != 0 || listen(listener, 4) != 0) return -1;
    int client = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(client, (struct sockaddr *)&un, un_length) != 0) return -1;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return -1;
    shutdown(pair[0], SHUT_WR);
    if (write(pair[1], "hello", 5) != 5) return -1;  // 5 bytes waiting in 8's receive queue
    int dgram = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un path = { .sun_family = AF_UNIX };
    snprintf(path.sun_path, sizeof path.sun_path, "/tmp/mitosis-dgram-%d", getpid());
    unlink(path.sun_path);
    if (bind(dgram, (struct sockaddr *)&path, sizeof path) != 0) return -1;
    int netlink = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl nl = { .nl_family = AF_NETLINK };
    if (bind(netlink, (struct sockaddr *)&nl, sizeof nl) != 0) return -1;
    int packet = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (packet < 0) return -1;
    int fds[] = { tcp4, tcp6, udp, listener, client, pair[0], pair[1], dgram, netlink, packet };
    for (int i = 0; i < 10; i++) if (fds[i] != 3 + i) scenario_fail("fd %d is %d", 3 + i, fds[i]);
    scenario_report("tcp4_port", "%d", local_port(tcp4));
    scenario_report("tcp6_port", "%d", local_port(tcp6));
    scenario_report("udp_port", "%d", local_port(udp));
    scenario_report("abstract", "mitosis-%d", getpid());
    scenario_report("dgram_path", "%s", path.sun_path);
    for (int fd = 3; fd <= 12; fd++) {
        char key[16];
        snprintf(key, sizeof key, "inode%d", fd);
        scenario_report(key, "%lu", inode_of(fd));
    }
    return 0;
}

SCENARIO(sockets, sockets_setup, NULL)

// `pairs`: the parent holds a pipe's read end (fd 3), one socket of a socketpair (fd 5) and an
// eventfd (fd 7); a forked child holds the write end (4), the other socket (6) and the same
// eventfd description (7).
static int pairs_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    int pipes[2], pair[2];
    if (pipe(pipes) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return -1;
    int event = eventfd(0, 0);
    if (pipes[0] != 3 || pair[0] != 5 || event != 7) scenario_fail("unexpected fds");
    unsigned long child_socket = inode_of(pair[1]);
    int keep[] = { 4, 6, 7 };
    pid_t child = fork_holder(keep, 3);
    close(4);
    close(6);
    scenario_report("child", "%d", child);
    scenario_report("pipe_inode", "%lu", inode_of(3));
    scenario_report("parent_socket", "%lu", inode_of(5));
    scenario_report("child_socket", "%lu", child_socket);
    return 0;
}
SCENARIO(pairs, pairs_setup, NULL)

// `tcp`: a server listening on 127.0.0.1 (fd 3) with a forked child connected to it (child fd 4)
// and that connection accepted (fd 4). `accept` accepts one more connection (an outside client's)
// as fd 5.
static int tcp_listen_fd = -1;

static int tcp_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    tcp_listen_fd = tcp_listener(AF_INET, "127.0.0.1", 0);
    int port = local_port(tcp_listen_fd);
    int client = tcp_connect("127.0.0.1", port);
    int keep[] = { client };
    pid_t child = fork_holder(keep, 1);
    close(client);
    int accepted = accept(tcp_listen_fd, NULL, NULL);
    if (tcp_listen_fd != 3 || client != 4 || accepted != 4) scenario_fail("unexpected fds");
    struct sockaddr_in peer;
    socklen_t length = sizeof peer;
    getpeername(accepted, (struct sockaddr *)&peer, &length);
    scenario_report("child", "%d", child);
    scenario_report("port", "%d", port);
    scenario_report("client_port", "%d", ntohs(peer.sin_port));
    scenario_report("listen_inode", "%lu", inode_of(3));
    scenario_report("server_inode", "%lu", inode_of(accepted));
    return 0;
}

static int tcp_step(const char *command) {
    if (strcmp(command, "accept") != 0) return -1;
    int fd = accept(tcp_listen_fd, NULL, NULL);
    if (fd < 0) return -1;
    struct sockaddr_in peer;
    socklen_t length = sizeof peer;
    getpeername(fd, (struct sockaddr *)&peer, &length);
    scenario_report("fd", "%d", fd);
    scenario_report("inode", "%lu", inode_of(fd));
    scenario_report("peer_port", "%d", ntohs(peer.sin_port));
    return 0;
}
SCENARIO(tcp, tcp_setup, tcp_step)

// `tcpclient PORT`: connects to 127.0.0.1:PORT as fd 3.
static int tcpclient_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    int fd = tcp_connect("127.0.0.1", atoi(argv[0]));
    scenario_report("fd", "%d", fd);
    scenario_report("inode", "%lu", inode_of(fd));
    scenario_report("local_port", "%d", local_port(fd));
    return 0;
}
SCENARIO(tcpclient, tcpclient_setup, NULL)

// `epoll`: an epoll (fd 3) watching one end of a socketpair (fd 4, the other end is 5) and an
// eventfd (fd 6).
static int epoll_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    int epoll = epoll_create1(0);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return -1;
    int event = eventfd(0, 0);
    struct epoll_event interest = { .events = EPOLLIN };
    interest.data.fd = pair[0];
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, pair[0], &interest) != 0) return -1;
    interest.data.fd = event;
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, event, &interest) != 0) return -1;
    if (epoll != 3 || pair[0] != 4 || pair[1] != 5 || event != 6) scenario_fail("unexpected fds");
    scenario_report("socket", "%lu", inode_of(4));
    scenario_report("peer", "%lu", inode_of(5));
    return 0;
}
SCENARIO(epoll, epoll_setup, NULL)

// `netns PORT`: moves into a new network namespace, brings up lo, listens on 127.0.0.1:PORT
// (fd 3), connects to itself (fd 4) and accepts (fd 5).
static int netns_setup(int argc, char **argv) {
    int port = argc > 0 ? atoi(argv[0]) : 7777;
    if (unshare(CLONE_NEWNET) != 0) scenario_fail("unshare(CLONE_NEWNET): %d", errno);
    int control = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    request.ifr_flags = IFF_UP | IFF_RUNNING;
    if (ioctl(control, SIOCSIFFLAGS, &request) != 0) scenario_fail("lo up: %d", errno);
    close(control);
    int listener = tcp_listener(AF_INET, "127.0.0.1", port);
    int client = tcp_connect("127.0.0.1", port);
    int accepted = accept(listener, NULL, NULL);
    if (listener != 3 || client != 4 || accepted != 5) scenario_fail("unexpected fds");
    scenario_report("listen_inode", "%lu", inode_of(3));
    scenario_report("client_inode", "%lu", inode_of(4));
    scenario_report("server_inode", "%lu", inode_of(5));
    scenario_report("client_port", "%d", local_port(4));
    return 0;
}
SCENARIO(netns, netns_setup, NULL)

// `graphload N`: about N descriptors cycling through files (one unlinked file opened again and
// again), pipes, eventfds, socketpairs and TCP connections to its own listener (fd 3).
static int graphload_setup(int argc, char **argv) {
    int count = argc > 0 ? atoi(argv[0]) : 1000;
    scenario_raise_fd_limit(count);
    int listener = tcp_listener(AF_INET, "127.0.0.1", 0);
    listen(listener, 4096);
    int port = local_port(listener);
    char path[64];
    snprintf(path, sizeof path, "/tmp/mitosis-graphload-%d", getpid());
    int opened = 1;
    for (int i = 0; opened < count; i++) {
        int pair[2];
        switch (i % 5) {
        case 0:
            if (open(path, O_RDWR | O_CREAT, 0600) < 0) scenario_fail("open: %d", errno);
            opened += 1;
            break;
        case 1:
            if (pipe(pair) != 0) scenario_fail("pipe: %d", errno);
            opened += 2;
            break;
        case 2:
            if (eventfd(0, 0) < 0) scenario_fail("eventfd: %d", errno);
            opened += 1;
            break;
        case 3:
            if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) scenario_fail("socketpair: %d", errno);
            opened += 2;
            break;
        default:
            tcp_connect("127.0.0.1", port);
            if (accept(listener, NULL, NULL) < 0) scenario_fail("accept: %d", errno);
            opened += 2;
        }
    }
    unlink(path);
    scenario_report("descriptors", "%d", opened);
    return 0;
}
SCENARIO(graphload, graphload_setup, NULL)

// MARK: ties — resources that tie a process to others outside its tree.

static int udp_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in in = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&in, sizeof in) != 0) scenario_fail("udp bind: %d", errno);
    return fd;
}

static void udp_connect(int fd, int port) {
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
    if (connect(fd, (struct sockaddr *)&in, sizeof in) != 0) scenario_fail("udp connect %d: %d", port, errno);
}

static int ties_unconnected = -1;

// `ties FIFO`: fd 3 the read end of the FIFO at path FIFO (the test made it); fds 4 and 5 two UDP
// sockets on 127.0.0.1 connected to each other; fd 6 a UDP socket that `connect PORT` connects
// (to 127.0.0.1:PORT); fd 7 a packet socket (raw, ETH_P_ALL); two SysV shared memory segments
// attached here: `own_shmid` only here, `shared_shmid` for a `tie-holder` to attach too.
static int ties_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    int fifo = open(argv[0], O_RDONLY | O_NONBLOCK);
    int a = udp_socket(), b = udp_socket();
    udp_connect(a, local_port(b));
    udp_connect(b, local_port(a));
    ties_unconnected = udp_socket();
    int packet = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    int fds[] = { fifo, a, b, ties_unconnected, packet };
    for (int i = 0; i < 5; i++) if (fds[i] != 3 + i) scenario_fail("fd %d is %d (errno %d)", 3 + i, fds[i], errno);
    int own = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600), shared = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    if (own < 0 || shared < 0 || shmat(own, NULL, 0) == (void *)-1 || shmat(shared, NULL, 0) == (void *)-1) return -1;
    // Removed now, destroyed when the last attachment goes: nothing outlives the test.
    shmctl(own, IPC_RMID, NULL);
    shmctl(shared, IPC_RMID, NULL);
    scenario_report("own_shmid", "%d", own);
    scenario_report("shared_shmid", "%d", shared);
    for (int fd = 3; fd <= 7; fd++) {
        char key[16];
        snprintf(key, sizeof key, "inode%d", fd);
        scenario_report(key, "%lu", inode_of(fd));
    }
    scenario_report("udp_a_port", "%d", local_port(a));
    scenario_report("udp_b_port", "%d", local_port(b));
    scenario_report("udp_port", "%d", local_port(ties_unconnected));
    return 0;
}

static int ties_step(const char *command) {
    int port;
    if (sscanf(command, "connect %d", &port) != 1) return -1;
    udp_connect(ties_unconnected, port);
    return 0;
}
SCENARIO(ties, ties_setup, ties_step)

// `tie-holder FIFO SHMID`: holds what ties a `ties` process to it: fd 3 the FIFO's write end,
// fd 4 a UDP socket on 127.0.0.1, and an attachment of SysV segment SHMID.
static int tie_holder_setup(int argc, char **argv) {
    if (argc < 2) return -1;
    int fifo = open(argv[0], O_WRONLY | O_NONBLOCK);
    int udp = udp_socket();
    if (fifo != 3 || udp != 4) scenario_fail("fds %d %d (errno %d)", fifo, udp, errno);
    if (shmat(atoi(argv[1]), NULL, 0) == (void *)-1) scenario_fail("shmat %s: %d", argv[1], errno);
    scenario_report("udp_port", "%d", local_port(udp));
    scenario_report("udp_inode", "%lu", inode_of(udp));
    return 0;
}
// Registered by hand: the SCENARIO macro cannot spell a name with a hyphen.
static scenario scenario_tie_holder = { "tie-holder", tie_holder_setup, NULL, 0 };
__attribute__((constructor)) static void register_tie_holder(void) { scenario_register(&scenario_tie_holder); }
