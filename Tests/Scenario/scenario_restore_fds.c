// `restorefds LOG LIFETIME_S KINDS`: a self-checking process holding one descriptor of each
// kind restore handles, at fixed numbers, for restore tests (ZDTM-style). KINDS is a comma list:
//
// inet  10 TCP/IPv4 listener on 127.0.0.1 (SO_REUSEADDR, TCP_NODELAY, SO_KEEPALIVE, backlog 7,
//          O_NONBLOCK); 11 TCP/IPv6 listener on ::1 (IPV6_V6ONLY, SO_REUSEPORT, SO_RCVBUF 65536,
//          backlog 3, close-on-exec); 12 UDP/IPv4 bound on 127.0.0.1; 13 UDP/IPv6 bound on ::1
//          and connected to 14, a UDP/IPv6 socket bound on ::1; 15 a TCP/IPv4 socket never bound.
// unix  20/21 a stream socketpair, each end holding unread bytes; 22/23 a datagram socketpair,
//          22 (non-blocking) holding two datagrams; 24 a unix stream listener bound to LOG.sock
//          (backlog 5); 25 an unnamed, unconnected datagram socket.
// files 30 a periodic CLOCK_MONOTONIC timerfd (50 s, then every 100 s; non-blocking, close-on-
//          exec); 31 an absolute CLOCK_MONOTONIC timerfd (deadline 600 s after setup); 32 an expired
//          CLOCK_REALTIME one-shot timerfd with one unread expiration; 33 a signalfd for SIGUSR2
//          and SIGRTMIN (non-blocking); 34 a memfd "fds-memfd" of 10000 patterned bytes at offset
//          1234 sealed against shrinking and growing; 35 LOG.deleted, deleted while open, at offset 3.
// shared  40 LOG.data open read-write at offset 5; 41 a dup of it (one open file description,
//          close-on-exec on 41 only); 42 LOG.data opened again at offset 9.
// watch 50 an inotify (non-blocking, close-on-exec) with watch 1 on the directory LOG.watchdir
//          (IN_CREATE|IN_DELETE), watch 2 removed again, and watch 3 on the file LOG.watched
//          (IN_MODIFY|IN_EXCL_UNLINK): the numbers keep a gap, as a long-running process's would.
// sysv  (no descriptor) two SysV shared memory segments: a private one of 3 pages, patterned,
//          attached read-write and marked for removal (IPC_RMID while attached, the usual way to
//          have it go with the process); and one of 2 pages under the key 0x4d540000 + pid, patterned,
//          attached read-only. The check verifies ids, attach addresses, modes and contents, and
//          that the first is still shared (a write through a second attach shows in the first).
// seccomp  (no descriptor) no_new_privs and two seccomp filters: the first (installed with
//          SECCOMP_FILTER_FLAG_LOG) fails getpriority with EACCES, the second kills the process on
//          getitimer — a call Mitosis injects while it checkpoints, so a dump must not let it through.
//
// fd 3 is LOG (O_APPEND). Command `detach` answers READY, points fds 0-2 at /dev/null and from
// then on answers only SIGUSR1: each makes the process verify every descriptor from the inside
// (addresses, options, flags, queued data, and that each one works: a connection accepted, a
// datagram received, the queues read and put back) and append one line to LOG:
//   `CHECK n=N PASS` or `CHECK n=N FAIL:reason`.
// The process exits by itself after LIFETIME_S seconds.
#define _GNU_SOURCE
#include "scenario.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/inotify.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double lifetime;
static int checks;
static char kinds[256];
static char unix_path[108];
static const char *to20 = "bytes queued for fd 20";
static const char *to21 = "and these for fd 21";
static const char *dgrams[2] = { "d1", "datagram two" };

static int has(const char *kind) {
    char list[300];
    snprintf(list, sizeof list, ",%s,", kinds);
    char wanted[64];
    snprintf(wanted, sizeof wanted, ",%s,", kind);
    return strstr(list, wanted) != NULL;
}

static int place(int fd, int at) {
    if (fd < 0) return -1;
    if (fd == at) return 0;
    int flags = fcntl(fd, F_GETFD);
    if (dup3(fd, at, flags & FD_CLOEXEC ? O_CLOEXEC : 0) != at) return -1;
    close(fd);
    return 0;
}

static int option(int fd, int level, int name) {
    int value = -1;
    socklen_t length = sizeof value;
    if (getsockopt(fd, level, name, &value, &length) != 0) return -1;
    return value;
}

static int set(int fd, int level, int name, int value) { return setsockopt(fd, level, name, &value, sizeof value); }

static int inet_listener(int family, const char *address, int backlog) {
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_storage storage = { 0 };
    socklen_t length;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&storage;
        in->sin_family = AF_INET;
        inet_pton(AF_INET, address, &in->sin_addr);
        length = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&storage;
        in6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, address, &in6->sin6_addr);
        length = sizeof *in6;
        if (set(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) != 0) return -1;
    }
    if (family == AF_INET && (set(fd, SOL_SOCKET, SO_REUSEADDR, 1) || set(fd, IPPROTO_TCP, TCP_NODELAY, 1) || set(fd, SOL_SOCKET, SO_KEEPALIVE, 1))) return -1;
    if (family == AF_INET6 && (set(fd, SOL_SOCKET, SO_REUSEPORT, 1) || set(fd, SOL_SOCKET, SO_RCVBUF, 65536))) return -1;
    if (bind(fd, (struct sockaddr *)&storage, length) != 0 || listen(fd, backlog) != 0) return -1;
    return fd;
}

static int udp_bound(int family, const char *address) {
    int fd = socket(family, SOCK_DGRAM, 0);
    struct sockaddr_storage storage = { 0 };
    socklen_t length;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&storage;
        in->sin_family = AF_INET;
        inet_pton(AF_INET, address, &in->sin_addr);
        length = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&storage;
        in6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, address, &in6->sin6_addr);
        length = sizeof *in6;
    }
    if (fd < 0 || bind(fd, (struct sockaddr *)&storage, length) != 0) return -1;
    return fd;
}

// Addresses recorded at setup, compared by the check.
static struct sockaddr_storage names[32];
static socklen_t name_lengths[32];

static int remember(int fd) {
    name_lengths[fd] = sizeof names[fd];
    return getsockname(fd, (struct sockaddr *)&names[fd], &name_lengths[fd]);
}

static int setup_inet(void) {
    if (place(inet_listener(AF_INET, "127.0.0.1", 7), 10) || fcntl(10, F_SETFL, O_NONBLOCK)) return -1;
    if (place(inet_listener(AF_INET6, "::1", 3), 11) || fcntl(11, F_SETFD, FD_CLOEXEC)) return -1;
    if (place(udp_bound(AF_INET, "127.0.0.1"), 12) || place(udp_bound(AF_INET6, "::1"), 13) || place(udp_bound(AF_INET6, "::1"), 14)) return -1;
    for (int fd = 10; fd <= 14; fd++) if (remember(fd)) return -1;
    if (connect(13, (struct sockaddr *)&names[14], name_lengths[14]) != 0) return -1;
    if (place(socket(AF_INET, SOCK_STREAM, 0), 15)) return -1;
    return 0;
}

static int setup_unix(const char *log) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) || place(pair[0], 20) || place(pair[1], 21)) return -1;
    if (send(21, to20, strlen(to20), 0) < 0 || send(20, to21, strlen(to21), 0) < 0) return -1;
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) || place(pair[0], 22) || place(pair[1], 23)) return -1;
    if (fcntl(22, F_SETFL, O_NONBLOCK)) return -1;
    for (int i = 0; i < 2; i++) if (send(23, dgrams[i], strlen(dgrams[i]), 0) < 0) return -1;
    snprintf(unix_path, sizeof unix_path, "%s.sock", log);
    unlink(unix_path);
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    strcpy(address.sun_path, unix_path);
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) || listen(listener, 5) || place(listener, 24)) return -1;
    if (place(socket(AF_UNIX, SOCK_DGRAM, 0), 25)) return -1;
    return 0;
}

static struct timespec deadline31;
static char deleted_path[300];
static const char *deleted_text = "deleted but open";

static unsigned char memfd_byte(int i) { return (unsigned char)(i * 31 + 7); }

static int setup_files(const char *log) {
    struct itimerspec periodic = { .it_interval = { 100, 0 }, .it_value = { 50, 0 } };
    if (place(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), 30) || timerfd_settime(30, 0, &periodic, NULL)) return -1;
    clock_gettime(CLOCK_MONOTONIC, &deadline31);
    deadline31.tv_sec += 600;  // far past any run: the check compares what is left with it
    struct itimerspec absolute = { .it_value = deadline31 };
    if (place(timerfd_create(CLOCK_MONOTONIC, 0), 31) || timerfd_settime(31, TFD_TIMER_ABSTIME, &absolute, NULL)) return -1;
    struct itimerspec soon = { .it_value = { 0, 1 } };
    if (place(timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK), 32) || timerfd_settime(32, 0, &soon, NULL)) return -1;
    struct pollfd fired = { .fd = 32, .events = POLLIN };
    if (poll(&fired, 1, 1000) != 1) return -1;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR2);
    sigaddset(&mask, SIGRTMIN);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    if (place(signalfd(-1, &mask, SFD_NONBLOCK), 33)) return -1;
    if (place(memfd_create("fds-memfd", MFD_ALLOW_SEALING | MFD_CLOEXEC), 34)) return -1;
    unsigned char bytes[10000];
    for (int i = 0; i < 10000; i++) bytes[i] = memfd_byte(i);
    if (write(34, bytes, sizeof bytes) != sizeof bytes || lseek(34, 1234, SEEK_SET) != 1234) return -1;
    if (fcntl(34, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)) return -1;
    snprintf(deleted_path, sizeof deleted_path, "%s.deleted", log);
    if (place(open(deleted_path, O_RDWR | O_CREAT | O_TRUNC, 0640), 35) || write(35, deleted_text, strlen(deleted_text)) < 0) return -1;
    if (lseek(35, 3, SEEK_SET) != 3 || unlink(deleted_path)) return -1;
    return 0;
}

static int setup_shared(const char *log) {
    char path[300];
    snprintf(path, sizeof path, "%s.data", log);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (place(fd, 40) || write(40, "0123456789abcdef", 16) != 16 || lseek(40, 5, SEEK_SET) != 5) return -1;
    if (place(fcntl(40, F_DUPFD_CLOEXEC, 41), 41)) return -1;
    if (place(open(path, O_RDWR), 42) || lseek(42, 9, SEEK_SET) != 9) return -1;
    return 0;
}

static char watch_dir[300], watched_file[300];

static int setup_watch(const char *log) {
    snprintf(watch_dir, sizeof watch_dir, "%s.watchdir", log);
    snprintf(watched_file, sizeof watched_file, "%s.watched", log);
    int file = open(watched_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (file < 0 || close(file) || mkdir(watch_dir, 0700)) return -1;
    if (place(inotify_init1(IN_NONBLOCK | IN_CLOEXEC), 50)) return -1;
    if (inotify_add_watch(50, watch_dir, IN_CREATE | IN_DELETE) != 1) return -1;
    if (inotify_add_watch(50, log, IN_MODIFY) != 2 || inotify_rm_watch(50, 2)) return -1;
    if (inotify_add_watch(50, watched_file, IN_MODIFY | IN_EXCL_UNLINK) != 3) return -1;
    char events[4096];
    while (read(50, events, sizeof events) > 0) {}  // the IN_IGNORED of watch 2
    return 0;
}

static int segment_private = -1, segment_keyed = -1;
static unsigned char *attached_private, *attached_keyed;

static unsigned char segment_byte(int segment, int i) { return (unsigned char)(i * 13 + segment * 101 + 5); }

static int setup_sysv(void) {
    segment_private = shmget(IPC_PRIVATE, 3 * 4096, IPC_CREAT | 0600);
    segment_keyed = shmget(0x4d540000 + getpid(), 2 * 4096, IPC_CREAT | IPC_EXCL | 0640);
    if (segment_private < 0 || segment_keyed < 0) return -1;
    attached_private = shmat(segment_private, NULL, 0);
    unsigned char *writable = shmat(segment_keyed, NULL, 0);
    if (attached_private == (void *)-1 || writable == (void *)-1) return -1;
    for (int i = 0; i < 3 * 4096; i++) attached_private[i] = segment_byte(0, i);
    for (int i = 0; i < 2 * 4096; i++) writable[i] = segment_byte(1, i);
    if (shmdt(writable) || shmctl(segment_private, IPC_RMID, NULL)) return -1;
    attached_keyed = shmat(segment_keyed, NULL, SHM_RDONLY);
    return attached_keyed == (void *)-1 ? -1 : 0;
}

static int install_filter(int nr, unsigned int action, unsigned int flags) {
    struct sock_filter program[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog filter = { sizeof program / sizeof program[0], program };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &filter);
}

static int setup_seccomp(void) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
    if (install_filter(SYS_getpriority, SECCOMP_RET_ERRNO | EACCES, SECCOMP_FILTER_FLAG_LOG)) return -1;
    return install_filter(SYS_getitimer, SECCOMP_RET_KILL_PROCESS, 0);
}

#define FAIL(...) do { snprintf(problem, size, __VA_ARGS__); return -1; } while (0)

static int same_name(int fd) {
    struct sockaddr_storage now;
    socklen_t length = sizeof now;
    return getsockname(fd, (struct sockaddr *)&now, &length) == 0 && length == name_lengths[fd] && memcmp(&now, &names[fd], length) == 0;
}

// Connects a new client to listener `fd`, accepts it and passes one message through.
static int accept_one(int fd, int family, socklen_t length, const struct sockaddr *address) {
    int client = socket(family, SOCK_STREAM, 0);
    if (client < 0 || connect(client, address, length) != 0) { close(client); return -1; }
    struct pollfd ready = { .fd = fd, .events = POLLIN };
    if (poll(&ready, 1, 2000) != 1) { close(client); return -2; }
    int served = accept(fd, NULL, NULL);
    char buffer[8] = "";
    int ok = served >= 0 && send(client, "ping", 4, 0) == 4 && recv(served, buffer, sizeof buffer, 0) == 4 && memcmp(buffer, "ping", 4) == 0;
    close(served);
    close(client);
    return ok ? 0 : -3;
}

static int check_inet(char *problem, size_t size) {
    for (int fd = 10; fd <= 14; fd++) if (!same_name(fd)) FAIL("fd %d bound elsewhere", fd);
    if (!(fcntl(10, F_GETFL) & O_NONBLOCK) || (fcntl(11, F_GETFL) & O_NONBLOCK)) FAIL("O_NONBLOCK of fds 10/11");
    if (fcntl(10, F_GETFD) != 0 || fcntl(11, F_GETFD) != FD_CLOEXEC) FAIL("close-on-exec of fds 10/11");
    if (option(10, SOL_SOCKET, SO_REUSEADDR) != 1 || option(10, IPPROTO_TCP, TCP_NODELAY) != 1 || option(10, SOL_SOCKET, SO_KEEPALIVE) != 1)
        FAIL("options of fd 10");
    if (option(11, SOL_SOCKET, SO_REUSEADDR) != 0 || option(11, SOL_SOCKET, SO_REUSEPORT) != 1 || option(11, IPPROTO_IPV6, IPV6_V6ONLY) != 1
        || option(11, SOL_SOCKET, SO_RCVBUF) != 131072 || option(11, IPPROTO_TCP, TCP_NODELAY) != 0)
        FAIL("options of fd 11");
    struct tcp_info info;
    socklen_t length = sizeof info;
    if (getsockopt(10, IPPROTO_TCP, TCP_INFO, &info, &length) || info.tcpi_state != TCP_LISTEN || info.tcpi_sacked != 7) FAIL("fd 10 is not listening with backlog 7");
    length = sizeof info;
    if (getsockopt(11, IPPROTO_TCP, TCP_INFO, &info, &length) || info.tcpi_state != TCP_LISTEN || info.tcpi_sacked != 3) FAIL("fd 11 is not listening with backlog 3");
    int result;
    if ((result = accept_one(10, AF_INET, name_lengths[10], (struct sockaddr *)&names[10]))) FAIL("fd 10 accepted nothing (%d)", result);
    if ((result = accept_one(11, AF_INET6, name_lengths[11], (struct sockaddr *)&names[11]))) FAIL("fd 11 accepted nothing (%d)", result);
    // UDP: a datagram to fd 12; fd 13 sends to its peer fd 14, which sees it come from fd 13.
    int sender = socket(AF_INET, SOCK_DGRAM, 0);
    char buffer[16] = "";
    int sent = sendto(sender, "u4", 2, 0, (struct sockaddr *)&names[12], name_lengths[12]);
    close(sender);
    struct pollfd ready = { .fd = 12, .events = POLLIN };
    if (sent != 2 || poll(&ready, 1, 2000) != 1 || recv(12, buffer, sizeof buffer, 0) != 2 || memcmp(buffer, "u4", 2)) FAIL("fd 12 received nothing");
    struct sockaddr_storage peer, from;
    socklen_t peer_length = sizeof peer, from_length = sizeof from;
    if (getpeername(13, (struct sockaddr *)&peer, &peer_length) || peer_length != name_lengths[14] || memcmp(&peer, &names[14], peer_length))
        FAIL("fd 13 is not connected to fd 14");
    ready.fd = 14;
    if (send(13, "u6", 2, 0) != 2 || poll(&ready, 1, 2000) != 1 || recvfrom(14, buffer, sizeof buffer, 0, (struct sockaddr *)&from, &from_length) != 2
        || memcmp(buffer, "u6", 2) || from_length != name_lengths[13] || memcmp(&from, &names[13], from_length))
        FAIL("fd 14 did not receive fd 13's datagram");
    struct sockaddr_in unbound;
    length = sizeof unbound;
    if (option(15, SOL_SOCKET, SO_TYPE) != SOCK_STREAM || option(15, SOL_SOCKET, SO_DOMAIN) != AF_INET
        || getsockname(15, (struct sockaddr *)&unbound, &length) || unbound.sin_port != 0)
        FAIL("fd 15 is not an unbound TCP socket");
    return 0;
}

// Reads `text` from `fd` and sends it again from `from`, so that the queue is as it was.
static int cycle_stream(int fd, int from, const char *text) {
    char buffer[64] = "";
    size_t length = strlen(text);
    if (recv(fd, buffer, sizeof buffer, MSG_DONTWAIT) != (ssize_t)length || memcmp(buffer, text, length)) return -1;
    return send(from, text, length, 0) == (ssize_t)length ? 0 : -1;
}

static int check_unix(char *problem, size_t size) {
    if (cycle_stream(20, 21, to20) || cycle_stream(21, 20, to21)) FAIL("the stream pair 20/21 lost its queued bytes");
    char buffer[64];
    for (int i = 0; i < 2; i++) {
        ssize_t got = recv(22, buffer, sizeof buffer, 0);
        if (got != (ssize_t)strlen(dgrams[i]) || memcmp(buffer, dgrams[i], got)) FAIL("datagram %d of fd 22", i);
    }
    if (recv(22, buffer, sizeof buffer, 0) != -1 || errno != EAGAIN) FAIL("fd 22 holds more than two datagrams or blocks");
    for (int i = 0; i < 2; i++) if (send(23, dgrams[i], strlen(dgrams[i]), 0) < 0) FAIL("fd 23 cannot send");
    struct sockaddr_un address;
    socklen_t length = sizeof address;
    if (getsockname(24, (struct sockaddr *)&address, &length) || strcmp(address.sun_path, unix_path)) FAIL("fd 24 is not bound to %s", unix_path);
    if (option(24, SOL_SOCKET, SO_ACCEPTCONN) != 1) FAIL("fd 24 is not listening");
    int result;
    if ((result = accept_one(24, AF_UNIX, length, (struct sockaddr *)&address))) FAIL("fd 24 accepted nothing (%d)", result);
    length = sizeof address;
    if (option(25, SOL_SOCKET, SO_TYPE) != SOCK_DGRAM || getsockname(25, (struct sockaddr *)&address, &length) || length != sizeof(sa_family_t))
        FAIL("fd 25 is not an unnamed datagram socket");
    return 0;
}

static int check_files(char *problem, size_t size) {
    struct itimerspec now;
    // Armed, with less than a period left: 50 s at first, then every 100 s (a check more than
    // 50 s after the start, on a loaded machine, finds the timer in its second period).
    if (timerfd_gettime(30, &now) || now.it_interval.tv_sec != 100 || now.it_interval.tv_nsec != 0 || now.it_value.tv_sec >= 100
        || (now.it_value.tv_sec == 0 && now.it_value.tv_nsec == 0))
        FAIL("timerfd 30: %lds interval, %lds left", (long)now.it_interval.tv_sec, (long)now.it_value.tv_sec);
    if (fcntl(30, F_GETFD) != FD_CLOEXEC || !(fcntl(30, F_GETFL) & O_NONBLOCK)) FAIL("flags of timerfd 30");
    struct timespec clock;
    clock_gettime(CLOCK_MONOTONIC, &clock);
    double expected = (deadline31.tv_sec - clock.tv_sec) + (deadline31.tv_nsec - clock.tv_nsec) / 1e9;
    if (timerfd_gettime(31, &now)) FAIL("timerfd 31");
    double left = now.it_value.tv_sec + now.it_value.tv_nsec / 1e9;
    if (left > expected + 0.05 || left < expected - 0.5) FAIL("timerfd 31 is due in %.3fs, its deadline in %.3fs", left, expected);
    uint64_t ticks = 0;
    if (read(32, &ticks, sizeof ticks) != sizeof ticks || ticks != 1) FAIL("timerfd 32 held %llu expirations", (unsigned long long)ticks);
    struct itimerspec soon = { .it_value = { 0, 1 } };
    struct pollfd fired = { .fd = 32, .events = POLLIN };
    if (timerfd_settime(32, 0, &soon, NULL) || poll(&fired, 1, 1000) != 1) FAIL("timerfd 32 does not fire again");
    kill(getpid(), SIGUSR2);
    struct signalfd_siginfo info;
    if (read(33, &info, sizeof info) != sizeof info || info.ssi_signo != SIGUSR2) FAIL("signalfd 33 did not read SIGUSR2");
    if (read(33, &info, sizeof info) != -1 || errno != EAGAIN) FAIL("signalfd 33 is not non-blocking");
    char link[300] = "";
    if (readlink("/proc/self/fd/34", link, sizeof link - 1) < 0 || strcmp(link, "/memfd:fds-memfd (deleted)")) FAIL("fd 34 is %s", link);
    unsigned char bytes[10001];
    if (pread(34, bytes, sizeof bytes, 0) != 10000 || lseek(34, 0, SEEK_CUR) != 1234) FAIL("memfd 34 size or offset");
    for (int i = 0; i < 10000; i++) if (bytes[i] != memfd_byte(i)) FAIL("memfd 34 byte %d", i);
    if (fcntl(34, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW) || fcntl(34, F_GETFD) != FD_CLOEXEC) FAIL("seals or flags of memfd 34");
    char expected_link[320];
    snprintf(expected_link, sizeof expected_link, "%s (deleted)", deleted_path);
    memset(link, 0, sizeof link);
    struct stat st;
    if (readlink("/proc/self/fd/35", link, sizeof link - 1) < 0 || strcmp(link, expected_link)) FAIL("fd 35 is %s", link);
    char text[64] = "";
    if (pread(35, text, sizeof text, 0) != (ssize_t)strlen(deleted_text) || strcmp(text, deleted_text) || lseek(35, 0, SEEK_CUR) != 3)
        FAIL("content or offset of fd 35");
    if (fstat(35, &st) || st.st_nlink != 0 || (st.st_mode & 0777) != 0640) FAIL("fd 35: %lu links, mode %o", (unsigned long)st.st_nlink, st.st_mode & 0777);
    return 0;
}

// Makes one event of each watch happen and reads exactly those back, by watch number.
static int check_watch(char *problem, size_t size) {
    if (fcntl(50, F_GETFD) != FD_CLOEXEC || !(fcntl(50, F_GETFL) & O_NONBLOCK)) FAIL("flags of inotify 50");
    char probe[320];
    snprintf(probe, sizeof probe, "%s/probe-%d", watch_dir, checks);
    int fd = open(probe, O_WRONLY | O_CREAT, 0600);
    if (fd < 0 || write(fd, "x", 1) != 1 || close(fd) || unlink(probe)) FAIL("probe file");
    fd = open(watched_file, O_WRONLY | O_APPEND);
    if (fd < 0 || write(fd, "y", 1) != 1 || close(fd)) FAIL("watched file");
    char buffer[4096] __attribute__((aligned(8)));
    ssize_t length = read(50, buffer, sizeof buffer);
    if (length <= 0) FAIL("inotify 50 read no event");
    int created = 0, deleted = 0, modified = 0;
    for (char *at = buffer; at < buffer + length;) {
        struct inotify_event *event = (struct inotify_event *)at;
        if (event->wd == 1 && (event->mask & IN_CREATE) && event->len && strncmp(event->name, "probe-", 6) == 0) created++;
        else if (event->wd == 1 && (event->mask & IN_DELETE)) deleted++;
        else if (event->wd == 3 && (event->mask & IN_MODIFY)) modified++;
        else FAIL("inotify 50: unexpected event wd %d mask %x", event->wd, event->mask);
        at += sizeof *event + event->len;
    }
    if (created != 1 || deleted != 1 || modified != 1) FAIL("inotify 50: %d created, %d deleted, %d modified", created, deleted, modified);
    return 0;
}

// The maps line of the attach at `address`: its permissions and the segment id (its inode).
static int attach_of(void *address, char perms[5], long *id) {
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, maps)) {
        unsigned long start;
        if (sscanf(line, "%lx-%*x %4s %*s %*s %ld", &start, perms, id) == 3 && start == (unsigned long)address) { found = 0; break; }
    }
    fclose(maps);
    return found;
}

static int check_sysv(char *problem, size_t size) {
    char perms[5] = "";
    long id = -1;
    if (attach_of(attached_private, perms, &id) || strcmp(perms, "rw-s") || id != segment_private)
        FAIL("private segment attach: %s id %ld (wanted %d)", perms, id, segment_private);
    if (attach_of(attached_keyed, perms, &id) || strcmp(perms, "r--s") || id != segment_keyed)
        FAIL("keyed segment attach: %s id %ld (wanted %d)", perms, id, segment_keyed);
    for (int i = 0; i < 3 * 4096; i++) if (attached_private[i] != segment_byte(0, i)) FAIL("private segment byte %d", i);
    for (int i = 0; i < 2 * 4096; i++) if (attached_keyed[i] != segment_byte(1, i)) FAIL("keyed segment byte %d", i);
    struct shmid_ds state;
    if (shmctl(segment_private, IPC_STAT, &state) || !(state.shm_perm.mode & SHM_DEST) || (state.shm_perm.mode & 0777) != 0600
        || state.shm_segsz != 3 * 4096)
        FAIL("private segment: mode %o size %zu", state.shm_perm.mode, state.shm_segsz);
    if (shmctl(segment_keyed, IPC_STAT, &state) || (state.shm_perm.mode & SHM_DEST) || (state.shm_perm.mode & 0777) != 0640
        || state.shm_segsz != 2 * 4096 || state.shm_perm.__key != 0x4d540000 + getpid())
        FAIL("keyed segment: mode %o size %zu", state.shm_perm.mode, state.shm_segsz);
    // Shared, not a private copy: a write through a second attach shows through the first.
    unsigned char *second = shmat(segment_private, NULL, 0);
    if (second == (void *)-1) FAIL("second attach of the private segment");
    second[100] ^= 0xff;
    int shared = attached_private[100] == (unsigned char)(segment_byte(0, 100) ^ 0xff);
    second[100] ^= 0xff;
    shmdt(second);
    if (!shared) FAIL("the private segment's attach is not shared memory");
    return 0;
}

static int check_seccomp(char *problem, size_t size) {
    FILE *status = fopen("/proc/self/status", "r");
    if (!status) FAIL("status");
    char line[256];
    int mode = -1, filters = -1, nnp = -1;
    while (fgets(line, sizeof line, status)) {
        sscanf(line, "Seccomp: %d", &mode);
        sscanf(line, "Seccomp_filters: %d", &filters);
        sscanf(line, "NoNewPrivs: %d", &nnp);
    }
    fclose(status);
    if (mode != 2 || filters != 2 || nnp != 1) FAIL("seccomp mode %d with %d filters, no_new_privs %d", mode, filters, nnp);
    errno = 0;
    if (syscall(SYS_getpriority, PRIO_PROCESS, 0) != -1 || errno != EACCES) FAIL("getpriority was not refused with EACCES");
    return 0;
}

static int check_shared(char *problem, size_t size) {
    if (lseek(40, 0, SEEK_CUR) != 5 || lseek(41, 0, SEEK_CUR) != 5 || lseek(42, 0, SEEK_CUR) != 9) FAIL("offsets of fds 40-42");
    if (fcntl(40, F_GETFD) != 0 || fcntl(41, F_GETFD) != FD_CLOEXEC || fcntl(42, F_GETFD) != 0) FAIL("close-on-exec of fds 40-42");
    char c = 0;
    // A read through 40 moves 41 (one description) but not 42.
    if (read(40, &c, 1) != 1 || c != '5' || lseek(41, 0, SEEK_CUR) != 6 || lseek(42, 0, SEEK_CUR) != 9) FAIL("fds 40 and 41 do not share an offset");
    if (read(42, &c, 1) != 1 || c != '9' || lseek(40, 5, SEEK_SET) != 5 || lseek(42, 9, SEEK_SET) != 9) FAIL("fd 42 is not its own description");
    return 0;
}

static int fds_check(char *problem, size_t size) {
    if (has("shared") && check_shared(problem, size)) return -1;
    if (has("files") && check_files(problem, size)) return -1;
    if (has("inet") && check_inet(problem, size)) return -1;
    if (has("unix") && check_unix(problem, size)) return -1;
    if (has("watch") && check_watch(problem, size)) return -1;
    if (has("sysv") && check_sysv(problem, size)) return -1;
    if (has("seccomp") && check_seccomp(problem, size)) return -1;
    return 0;
}

static void log_check(void) {
    char problem[256] = "", line[400];
    int intact = fds_check(problem, sizeof problem) == 0;
    for (char *c = problem; *c; c++) if (*c == ' ') *c = '_';
    int length = snprintf(line, sizeof line, "CHECK n=%d %s%s\n", ++checks, intact ? "PASS" : "FAIL:", problem);
    if (write(3, line, length) != length) _exit(5);
}

static int fds_setup(int argc, char **argv) {
    if (argc < 3) return -1;
    lifetime = atof(argv[1]);
    snprintf(kinds, sizeof kinds, "%s", argv[2]);
    prctl(PR_SET_PDEATHSIG, 0);
    if (place(open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600), 3)) return -1;
    if (write(3, "START\n", 6) != 6) return -1;
    signal(SIGPIPE, SIG_IGN);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    if (has("inet") && setup_inet()) return -1;
    if (has("unix") && setup_unix(argv[0])) return -1;
    if (has("shared") && setup_shared(argv[0])) return -1;
    if (has("files") && setup_files(argv[0])) return -1;
    if (has("watch") && setup_watch(argv[0])) return -1;
    if (has("sysv") && setup_sysv()) return -1;
    if (has("seccomp") && setup_seccomp()) return -1;
    return 0;
}

static int fds_step(const char *command) {
    if (strcmp(command, "detach") != 0) return -1;
    scenario_detach_standard_streams();
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    struct timespec start, now, second = { 1, 0 };
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (sigtimedwait(&usr1, NULL, &second) == SIGUSR1) log_check();
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > lifetime) _exit(0);
    }
}
SCENARIO_CHECKED(restorefds, fds_setup, fds_step, fds_check)
