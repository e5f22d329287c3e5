// `proctree LOG LIFETIME_S`: a self-checking process tree for tree dumps and restores.
//
// The parent leads its own session (setsid) and holds fd 3, LOG (O_APPEND), fd 4, a TCP listener
// on 127.0.0.1 (backlog 8), and a 64 KiB anonymous MAP_SHARED mapping (patterned, plus a counter
// every check increments); then forks two children that inherit all three (one open file
// description of LOG, one socket, one shared object). A pipe runs from child A (the writer, its
// write end at fd 6) to child B (the reader, its non-blocking read end at fd 5); the parent keeps
// neither end. B leads its own process group (setpgid) in the parent's session; A stays in the
// parent's group. fd 7, in all three, is the write end of a pipe whose read end nobody holds
// (a write fails with EPIPE). Reports `READY pid=P a=A b=B port=N`.
//
// Command `detach` answers READY, points the parent's fds 0-2 at /dev/null (the children's are
// from birth) and from then on each process answers SIGUSR1 with one line appended to LOG:
//   `CHECK role=R pid=P n=N PASS shared=S` or `CHECK role=R pid=P n=N FAIL:reason`
// checking LOG's flags, the shared pattern, the listener (port, listening; the parent also
// connects to it and accepts), its parent, session and group, and its pipe end: A writes
// "ping\n" into the pipe, B reads everything queued (at least one ping, nothing else). S is the
// shared counter after this check's increment: consecutive checks of any members count on
// from each other only if they share the mapping. SIGUSR2 makes a child exit with status 7; the
// parent reaps it and logs `REAPED pid=P status=S`. Each process exits after LIFETIME_S seconds.
#define _GNU_SOURCE
#include "scenario.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SHARED_SIZE (64 * 1024)

struct shared {
    int counter;
};

static double lifetime;
static const char *role = "parent";
static unsigned char *shared_area;
static int port;
static int checks;
static pid_t expected_parent, expected_session, expected_group;

static int check_common(char *problem, size_t size) {
    int flags = fcntl(3, F_GETFL);
    if (flags < 0 || !(flags & O_APPEND)) { snprintf(problem, size, "log-flags-%d", flags); return -1; }
    for (int i = 64; i < SHARED_SIZE; i++) {
        if (shared_area[i] != (unsigned char)(i * 7 + 3)) { snprintf(problem, size, "shared-byte-%d", i); return -1; }
    }
    struct sockaddr_in address;
    socklen_t length = sizeof address;
    int listening = 0;
    socklen_t option = sizeof listening;
    if (getsockname(4, (struct sockaddr *)&address, &length) != 0 || ntohs(address.sin_port) != port) {
        snprintf(problem, size, "listener-port");
        return -1;
    }
    if (getsockopt(4, SOL_SOCKET, SO_ACCEPTCONN, &listening, &option) != 0 || !listening) { snprintf(problem, size, "not-listening"); return -1; }
    if (expected_parent && getppid() != expected_parent) { snprintf(problem, size, "parent-%d-not-%d", getppid(), expected_parent); return -1; }
    if (getsid(0) != expected_session) { snprintf(problem, size, "session-%d-not-%d", getsid(0), expected_session); return -1; }
    if (getpgrp() != expected_group) { snprintf(problem, size, "group-%d-not-%d", getpgrp(), expected_group); return -1; }
    if ((fcntl(7, F_GETFL) & O_ACCMODE) != O_WRONLY || write(7, "x", 1) != -1 || errno != EPIPE) { snprintf(problem, size, "lone-pipe-has-a-reader"); return -1; }
    return 0;
}

static int check_role(char *problem, size_t size) {
    if (strcmp(role, "parent") == 0) {
        int client = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port) };
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
        if (client < 0 || connect(client, (struct sockaddr *)&address, sizeof address) != 0) { snprintf(problem, size, "connect-%d", errno); return -1; }
        struct pollfd ready = { .fd = 4, .events = POLLIN };
        int accepted = poll(&ready, 1, 2000) == 1 ? accept(4, NULL, NULL) : -1;
        close(client);
        if (accepted < 0) { snprintf(problem, size, "accept"); return -1; }
        close(accepted);
        if (fcntl(5, F_GETFD) != -1 || fcntl(6, F_GETFD) != -1) { snprintf(problem, size, "parent-holds-a-pipe-end"); return -1; }
    } else if (strcmp(role, "a") == 0) {
        if ((fcntl(6, F_GETFL) & O_ACCMODE) != O_WRONLY) { snprintf(problem, size, "fd6-not-write-end"); return -1; }
        if (write(6, "ping\n", 5) != 5) { snprintf(problem, size, "pipe-write-%d", errno); return -1; }
    } else {
        if ((fcntl(5, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) != (O_RDONLY | O_NONBLOCK)) { snprintf(problem, size, "fd5-flags"); return -1; }
        char buffer[4096];
        ssize_t got = read(5, buffer, sizeof buffer);
        if (got <= 0) { snprintf(problem, size, "pipe-empty-%d", errno); return -1; }
        if (got % 5 != 0) { snprintf(problem, size, "pipe-bytes-%zd", got); return -1; }
        for (ssize_t i = 0; i < got; i += 5) {
            if (memcmp(buffer + i, "ping\n", 5) != 0) { snprintf(problem, size, "pipe-content"); return -1; }
        }
    }
    return 0;
}

static void log_check(void) {
    char problem[200] = "";
    int intact = check_common(problem, sizeof problem) == 0 && check_role(problem, sizeof problem) == 0;
    int counter = __atomic_add_fetch(&((struct shared *)shared_area)->counter, 1, __ATOMIC_SEQ_CST);
    char line[400];
    int length = snprintf(line, sizeof line, "CHECK role=%s pid=%d n=%d %s%s shared=%d\n", role, getpid(), ++checks,
                          intact ? "PASS" : "FAIL:", problem, counter);
    if (write(3, line, length) != length) _exit(5);
}

/// Waits for signals until the lifetime ends: SIGUSR1 checks, SIGUSR2 ends a child, SIGCHLD reaps.
__attribute__((noreturn)) static void serve(void) {
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGUSR1);
    sigaddset(&wanted, SIGUSR2);
    sigaddset(&wanted, SIGCHLD);
    struct timespec start, now, second = { 1, 0 };
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int signal = sigtimedwait(&wanted, NULL, &second);
        if (signal == SIGUSR1) log_check();
        if (signal == SIGUSR2 && strcmp(role, "parent") != 0) _exit(7);
        if (signal == SIGCHLD) {
            int status;
            pid_t child;
            while ((child = waitpid(-1, &status, WNOHANG)) > 0) {
                char line[100];
                int length = snprintf(line, sizeof line, "REAPED pid=%d status=%d\n", child, WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
                if (write(3, line, length) != length) _exit(5);
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > lifetime) {
            char line[160];
            int length = snprintf(line, sizeof line, "EXIT role=%s pid=%d lifetime=%.0f started=%ld now=%ld\n", role, getpid(), lifetime,
                                  (long)start.tv_sec, (long)now.tv_sec);
            if (write(3, line, length) != length) _exit(5);
            _exit(0);
        }
    }
}

static void to_dev_null(void) {
    int null = open("/dev/null", O_RDWR);
    if (null < 0) _exit(4);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 2) close(null);
}

static int tree_setup(int argc, char **argv) {
    if (argc < 2) return -1;
    lifetime = atof(argv[1]);
    prctl(PR_SET_PDEATHSIG, 0);
    signal(SIGPIPE, SIG_IGN);  // A's check after B's exit fails with EPIPE rather than killing A
    if (setsid() < 0) return -1;
    int log = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (log != 3 && (log < 0 || dup2(log, 3) != 3 || close(log) != 0)) return -1;
    if (write(3, "START\n", 6) != 6) return -1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    socklen_t length = sizeof address;
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 8) != 0) return -1;
    if (getsockname(listener, (struct sockaddr *)&address, &length) != 0) return -1;
    port = ntohs(address.sin_port);
    if (listener != 4 && (dup2(listener, 4) != 4 || close(listener) != 0)) return -1;
    shared_area = mmap(NULL, SHARED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared_area == MAP_FAILED) return -1;
    for (int i = 64; i < SHARED_SIZE; i++) shared_area[i] = (unsigned char)(i * 7 + 3);
    int ends[2];
    if (pipe(ends) != 0 || dup2(ends[0], 5) != 5 || dup2(ends[1], 6) != 6) return -1;
    if (ends[0] != 5 && ends[0] != 6) close(ends[0]);
    if (ends[1] != 5 && ends[1] != 6) close(ends[1]);
    if (fcntl(5, F_SETFL, O_NONBLOCK) != 0) return -1;
    // fd 7: the write end of a pipe whose read end nobody holds (every member inherits it).
    int lone[2];
    if (pipe(lone) != 0) return -1;
    if (lone[0] != 7) close(lone[0]);  // else dup2 below closes it
    if (lone[1] != 7 && (dup2(lone[1], 7) != 7 || close(lone[1]) != 0)) return -1;
    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGUSR2);
    sigaddset(&blocked, SIGCHLD);
    sigprocmask(SIG_BLOCK, &blocked, NULL);
    expected_session = getsid(0);
    pid_t parent = getpid();
    pid_t children[2];
    for (int index = 0; index < 2; index++) {
        pid_t child = fork();
        if (child < 0) return -1;
        if (child == 0) {
            to_dev_null();
            role = index == 0 ? "a" : "b";
            expected_parent = parent;
            close(index == 0 ? 5 : 6);
            if (index == 1 && setpgid(0, 0) != 0) _exit(3);
            expected_group = getpgrp();
            serve();
        }
        children[index] = child;
        if (index == 1) setpgid(child, child);  // also from here: no race with the report below
    }
    close(5);
    close(6);
    expected_group = getpgrp();
    scenario_report("a", "%d", children[0]);
    scenario_report("b", "%d", children[1]);
    scenario_report("port", "%d", port);
    return 0;
}

static int tree_step(const char *command) {
    if (strcmp(command, "detach") != 0) return -1;
    scenario_detach_standard_streams();
    serve();
}
SCENARIO(proctree, tree_setup, tree_step)
