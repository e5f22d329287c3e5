// TCP connections that survive a checkpoint: a server, its client and a process that adopts the
// server's connection, all on the loopback of a network namespace the server creates (nothing
// outside it is touched; the namespace dies with the last of them).
//
// Protocol on the connection: the client writes `REQ x\n`, the server answers `ANS x\n`. `blast N`
// makes the server write up to N bytes of a known pattern, as much as fits without blocking,
// so that bytes stay queued. The client checks, byte for byte, that everything arrives exactly
// once and in order.
#define _GNU_SOURCE
#include "scenario.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int family_of(const char *name) { return strcmp(name, "ipv6") == 0 ? AF_INET6 : AF_INET; }

static socklen_t loopback(int family, int port, struct sockaddr_storage *address) {
    memset(address, 0, sizeof *address);
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)address;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        a->sin6_addr = in6addr_loopback;
        return sizeof *a;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)address;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sizeof *a;
}

static void join_namespace(const char *pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/net", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) scenario_fail("setns %s: %d", path, errno);
    close(fd);
}

static int port_of(int fd, int peer) {
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if ((peer ? getpeername : getsockname)(fd, (struct sockaddr *)&address, &length) != 0) return -1;
    return ntohs(address.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&address)->sin6_port
                                               : ((struct sockaddr_in *)&address)->sin_port);
}

static unsigned char pattern(long offset) { return (unsigned char)((offset * 7 + 3) % 251); }

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

// ---- the server side (the server, and the process that adopts its connection) -------------

static int connection = -1;
static long blasted;

/// Reads `count` request lines (10 s at most) and answers each.
static int serve(int count) {
    char line[256];
    size_t used = 0;
    long deadline = now_ms() + 10000;
    while (count > 0) {
        struct pollfd p = { connection, POLLIN, 0 };
        long left = deadline - now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) <= 0) { scenario_report("served", "timeout"); return 0; }
        char c;
        ssize_t n = recv(connection, &c, 1, MSG_DONTWAIT);
        if (n == 0) { scenario_report("served", "eof"); return 0; }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            scenario_report("served", "error-%d", errno);
            return 0;
        }
        if (used + 1 >= sizeof line) return -1;
        line[used++] = c;
        if (c != '\n') continue;
        if (used < 5 || memcmp(line, "REQ ", 4) != 0) return -1;
        char answer[260];
        int length = snprintf(answer, sizeof answer, "ANS %.*s", (int)(used - 4), line + 4);
        for (int done = 0; done < length;) {
            ssize_t w = send(connection, answer + done, length - done, 0);
            if (w <= 0) { scenario_report("served", "send-error-%d", errno); return 0; }
            done += w;
        }
        used = 0;
        count--;
    }
    scenario_report("served", "ok");
    return 0;
}

/// Writes up to `count` pattern bytes, as many as fit now.
static int blast(long count) {
    char chunk[4096];
    while (count > 0) {
        size_t size = count < (long)sizeof chunk ? (size_t)count : sizeof chunk;
        for (size_t i = 0; i < size; i++) chunk[i] = pattern(blasted + i);
        ssize_t n = send(connection, chunk, size, MSG_DONTWAIT);
        if (n < 0) break;
        blasted += n;
        count -= n;
    }
    scenario_report("blasted", "%ld", blasted);
    return 0;
}

/// `detach`: answers READY, closes the listener, points fds 0–2 at /dev/null (so the process
/// holds nothing but its connection, for a restore) and from then on answers requests on its
/// own, blocked in `recv`, until the client closes the connection (or 120 s pass).
static void serve_forever(void) {
    printf("READY detached=1\n");
    fflush(stdout);
    prctl(PR_SET_PDEATHSIG, 0);
    alarm(120);
    close(3);
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 2) close(null);
    char line[256];
    size_t used = 0;
    for (;;) {
        char c;
        ssize_t n = recv(connection, &c, 1, 0);
        if (n == 0) _exit(0);
        if (n < 0) { if (errno == EINTR) continue; _exit(3); }
        if (used + 1 >= sizeof line) _exit(4);
        line[used++] = c;
        if (c != '\n') continue;
        char answer[260];
        int length = snprintf(answer, sizeof answer, "ANS %.*s", (int)(used - 4), line + 4);
        for (int done = 0; done < length;) {
            ssize_t w = send(connection, answer + done, length - done, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) _exit(5);
            done += w;
        }
        used = 0;
    }
}

static int server_step(const char *command) {
    if (strcmp(command, "detach") == 0) serve_forever();
    if (strcmp(command, "accept") == 0) {
        connection = accept4(3, NULL, NULL, SOCK_CLOEXEC);
        if (connection != 4) scenario_fail("accept: fd %d, errno %d", connection, errno);
        int on = 1;
        setsockopt(connection, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        setsockopt(connection, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
        setsockopt(connection, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
        scenario_report("fd", "%d", connection);
        scenario_report("peer_port", "%d", port_of(connection, 1));
        return 0;
    }
    if (strncmp(command, "serve ", 6) == 0) return serve(atoi(command + 6));
    if (strncmp(command, "blast ", 6) == 0) return blast(atol(command + 6));
    return -1;
}

/// `repairserver FAMILY PORT`: a new network namespace with its loopback up, a listener at fd 3
/// on 127.0.0.1 or ::1; `accept` takes the client's connection at fd 4.
static int server_setup(int argc, char **argv) {
    if (argc < 2) return -1;
    int family = family_of(argv[0]);
    if (unshare(CLONE_NEWNET) != 0) scenario_fail("unshare(CLONE_NEWNET): %d", errno);
    int control = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    request.ifr_flags = IFF_UP | IFF_RUNNING;
    if (ioctl(control, SIOCSIFFLAGS, &request) != 0) scenario_fail("lo up: %d", errno);
    close(control);
    int listener = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_storage address;
    socklen_t length = loopback(family, atoi(argv[1]), &address);
    // ::1 comes up a moment after lo (duplicate address detection is off on loopback, but the
    // address is added asynchronously): retry briefly.
    int bound = -1;
    for (int i = 0; i < 100 && (bound = bind(listener, (struct sockaddr *)&address, length)) != 0; i++) usleep(10000);
    if (listener != 3 || bound != 0 || listen(listener, 4) != 0) scenario_fail("listener: %d", errno);
    scenario_report("port", "%d", port_of(listener, 0));
    return 0;
}
SCENARIO(repairserver, server_setup, server_step)

/// `repairadopt NSPID FAMILY`: joins the namespace of process NSPID and creates an unconnected TCP
/// socket at fd 3, for Mitosis to turn into the server's connection; then serves like the server.
static int adopt_setup(int argc, char **argv) {
    if (argc < 2) return -1;
    join_namespace(argv[0]);
    connection = socket(family_of(argv[1]), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connection != 3) scenario_fail("socket: fd %d, errno %d", connection, errno);
    scenario_report("fd", "%d", connection);
    return 0;
}
SCENARIO(repairadopt, adopt_setup, server_step)

// ---- the client ---------------------------------------------------------------------------

static int client = -1;
static unsigned char *received;
static size_t received_length, received_capacity;

/// Reads what is there without waiting; `eof`/`error` say whether the connection was closed
/// or reset.
static int drain(int *eof, int *error) {
    *eof = 0;
    *error = 0;
    for (;;) {
        if (received_length == received_capacity) {
            received_capacity = received_capacity ? received_capacity * 2 : 1 << 20;
            received = realloc(received, received_capacity);
        }
        ssize_t n = recv(client, received + received_length, received_capacity - received_length, MSG_DONTWAIT);
        if (n > 0) { received_length += n; continue; }
        if (n == 0) { *eof = 1; return 0; }
        if (errno == EINTR) continue;
        if (errno != EAGAIN) *error = errno;
        return 0;
    }
}

/// Whether `received` is exactly `count` pattern bytes followed by `ANS x\n` for each name of
/// the comma-separated `names`; writes the first difference into `problem`.
static int compare(long count, const char *names, char *problem, size_t size) {
    char expected_tail[1024] = "";
    char copy[512];
    snprintf(copy, sizeof copy, "%s", names);
    for (char *name = strtok(copy, ","); name; name = strtok(NULL, ",")) {
        size_t used = strlen(expected_tail);
        snprintf(expected_tail + used, sizeof expected_tail - used, "ANS %s\n", name);
    }
    size_t tail = strlen(expected_tail);
    if (received_length < (size_t)count + tail) {
        snprintf(problem, size, "short:%zu_of_%zu", received_length, (size_t)count + tail);
        return 1;
    }
    if (received_length > (size_t)count + tail) {
        snprintf(problem, size, "long:%zu_of_%zu", received_length, (size_t)count + tail);
        return -1;
    }
    for (long i = 0; i < count; i++) {
        if (received[i] != pattern(i)) { snprintf(problem, size, "pattern_byte_%ld", i); return -1; }
    }
    if (memcmp(received + count, expected_tail, tail) != 0) { snprintf(problem, size, "answers_differ"); return -1; }
    return 0;
}

static int client_step(const char *command) {
    if (strncmp(command, "send ", 5) == 0) {
        char line[256];
        int length = snprintf(line, sizeof line, "REQ %s\n", command + 5);
        ssize_t n = send(client, line, length, MSG_NOSIGNAL);
        scenario_report("sent", "%zd", n);
        scenario_report("errno", "%d", n < 0 ? errno : 0);
        return 0;
    }
    if (strcmp(command, "drain") == 0) {
        int eof, error;
        drain(&eof, &error);
        scenario_report("received", "%zu", received_length);
        scenario_report("eof", "%d", eof);
        scenario_report("error", "%d", error);
        return 0;
    }
    if (strncmp(command, "expect ", 7) == 0) {
        // `expect N a,b,c`: wait (20 s at most) until N pattern bytes and the answers arrived.
        long count = atol(command + 7);
        const char *names = strchr(command + 7, ' ');
        names = names ? names + 1 : "";
        long start = now_ms();
        char problem[128] = "";
        int verdict;
        int eof = 0, error = 0;
        while ((verdict = compare(count, names, problem, sizeof problem)) == 1 && now_ms() - start < 20000 && !eof && !error) {
            struct pollfd p = { client, POLLIN, 0 };
            poll(&p, 1, 100);
            drain(&eof, &error);
        }
        scenario_report("expect", "%s%s", verdict == 0 ? "PASS" : "FAIL:", verdict == 0 ? "" : problem);
        scenario_report("waited_ms", "%ld", now_ms() - start);
        scenario_report("eof", "%d", eof);
        scenario_report("error", "%d", error);
        received_length = 0;
        return 0;
    }
    return -1;
}

/// `repairclient NSPID FAMILY PORT`: joins the namespace of the server NSPID and connects to its
/// loopback port with a small receive buffer (so that a blast stays queued at the server).
static int client_setup(int argc, char **argv) {
    if (argc < 3) return -1;
    join_namespace(argv[0]);
    int family = family_of(argv[1]);
    client = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096;
    setsockopt(client, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_storage address;
    socklen_t length = loopback(family, atoi(argv[2]), &address);
    if (connect(client, (struct sockaddr *)&address, length) != 0) scenario_fail("connect: %d", errno);
    scenario_report("fd", "%d", client);
    scenario_report("port", "%d", port_of(client, 0));
    return 0;
}
SCENARIO(repairclient, client_setup, client_step)
