// `unixnamed LOG`: a self-checking process connected to its own named unix listeners, with bytes
// queued both ways, for restore tests.
//
// 30 a stream listener bound to LOG.sock (backlog 4); 31 a client connected to it; 32 the end 30
//    accepted (non-blocking, close-on-exec). 31 holds "to-client" (sent from 32), 32 holds
//    "to-server" and then "more" (sent from 31).
// 33 a seqpacket listener on the abstract name "@mitosis-named-PID"; 34 a client connected to it;
//    35 the accepted end. 34 holds the records "r1" and "r2" (sent from 35), 35 holds "r3".
// The check verifies names (getsockname, getpeername), flags, SO_PEERCRED and the queues, by
// peeking, so that it can run again and again.
#define _GNU_SOURCE
#include "scenario.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct sockaddr_un path_address, abstract_address;
static socklen_t abstract_length;

static int place(int fd, int wanted) {
    if (fd == wanted) return 0;
    if (dup2(fd, wanted) != wanted) return -1;
    close(fd);
    return 0;
}

static int named_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    path_address.sun_family = AF_UNIX;
    if (snprintf(path_address.sun_path, sizeof path_address.sun_path, "%s.sock", argv[0]) >= (int)sizeof path_address.sun_path) return -1;
    unlink(path_address.sun_path);
    abstract_address.sun_family = AF_UNIX;
    int n = snprintf(abstract_address.sun_path + 1, sizeof abstract_address.sun_path - 1, "mitosis-named-%d", getpid());
    abstract_length = offsetof(struct sockaddr_un, sun_path) + 1 + n;

    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (listener < 0 || place(listener, 30) || bind(30, (struct sockaddr *)&path_address, sizeof path_address) || listen(30, 4)) return -1;
    int client = socket(AF_UNIX, SOCK_STREAM, 0);
    if (client < 0 || place(client, 31) || connect(31, (struct sockaddr *)&path_address, sizeof path_address)) return -1;
    int accepted = accept4(30, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (accepted < 0 || place(accepted, 32) || fcntl(32, F_SETFD, FD_CLOEXEC)) return -1;
    if (send(32, "to-client", 9, 0) != 9 || send(31, "to-server", 9, 0) != 9 || send(31, "more", 4, 0) != 4) return -1;

    listener = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (listener < 0 || place(listener, 33) || bind(33, (struct sockaddr *)&abstract_address, abstract_length) || listen(33, 2)) return -1;
    client = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (client < 0 || place(client, 34) || connect(34, (struct sockaddr *)&abstract_address, abstract_length)) return -1;
    accepted = accept(33, NULL, NULL);
    if (accepted < 0 || place(accepted, 35)) return -1;
    if (send(35, "r1", 2, 0) != 2 || send(35, "r2", 2, 0) != 2 || send(34, "r3", 2, 0) != 2) return -1;
    scenario_report("path", "%s", path_address.sun_path);
    return 0;
}

#define FAIL(...) do { snprintf(problem, size, __VA_ARGS__); return -1; } while (0)

/// The name of `fd` (or of its peer) equals `wanted`.
static int named(int fd, int peer, const struct sockaddr_un *wanted, socklen_t length) {
    struct sockaddr_un address;
    socklen_t got = sizeof address;
    memset(&address, 0, sizeof address);
    if ((peer ? getpeername(fd, (struct sockaddr *)&address, &got) : getsockname(fd, (struct sockaddr *)&address, &got)) != 0) return 0;
    if (wanted->sun_path[0] == 0) return got == length && memcmp(&address, wanted, length) == 0;
    return strcmp(address.sun_path, wanted->sun_path) == 0;
}

/// The bytes queued at `fd`, peeked record by record (a stream: all at once), joined with '|'.
static void queued(int fd, char *out, size_t size) {
    int offset = 0;
    out[0] = 0;
    for (;;) {
        char bytes[64];
        setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &offset, sizeof offset);
        ssize_t n = recv(fd, bytes, sizeof bytes - 1, MSG_PEEK | MSG_DONTWAIT);
        if (n <= 0) break;
        bytes[n] = 0;
        if (out[0]) strncat(out, "|", size - strlen(out) - 1);
        strncat(out, bytes, size - strlen(out) - 1);
        offset += n;
    }
    int off = -1;
    setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
}

static int named_check(char *problem, size_t size) {
    char text[128];
    if (!named(30, 0, &path_address, 0) || !named(31, 1, &path_address, 0) || !named(32, 0, &path_address, 0))
        FAIL("stream-names");
    if (!named(33, 0, &abstract_address, abstract_length) || !named(34, 1, &abstract_address, abstract_length)
        || !named(35, 0, &abstract_address, abstract_length))
        FAIL("seqpacket-names");
    int accepting = 0;
    socklen_t length = sizeof accepting;
    if (getsockopt(30, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) || !accepting) FAIL("30-not-listening");
    if ((fcntl(32, F_GETFL) & O_NONBLOCK) == 0 || fcntl(32, F_GETFD) != FD_CLOEXEC) FAIL("32-flags");
    if ((fcntl(31, F_GETFL) & O_NONBLOCK) != 0 || fcntl(31, F_GETFD) != 0) FAIL("31-flags");
    struct ucred creds;
    length = sizeof creds;
    if (getsockopt(31, SOL_SOCKET, SO_PEERCRED, &creds, &length) || creds.pid != getpid()) FAIL("31-peercred-pid=%d", creds.pid);
    queued(31, text, sizeof text);
    if (strcmp(text, "to-client")) FAIL("31-queued:%s", text);
    queued(32, text, sizeof text);
    if (strcmp(text, "to-servermore")) FAIL("32-queued:%s", text);
    queued(34, text, sizeof text);
    if (strcmp(text, "r1|r2")) FAIL("34-queued:%s", text);
    queued(35, text, sizeof text);
    if (strcmp(text, "r3")) FAIL("35-queued:%s", text);
    int type = 0;
    length = sizeof type;
    if (getsockopt(35, SOL_SOCKET, SO_TYPE, &type, &length) || type != SOCK_SEQPACKET) FAIL("35-type=%d", type);
    return 0;
}

SCENARIO_CHECKED(unixnamed, named_setup, NULL, named_check)
