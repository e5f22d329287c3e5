// `restore LOG MIB WORKERS LIFETIME_S`: a self-checking process for restore tests (ZDTM-style).
//
// It holds MIB MiB of patterned anonymous memory and a patterned heap block, WORKERS threads
// that each count in a loop and check their thread-local marker (fs_base), a ticker thread
// that ticks every 10 ms on CLOCK_MONOTONIC (absolute sleeps), a SIGUSR1 handler, SIGPIPE
// ignored, SIGUSR1 blocked in every thread but the main one's sigsuspend, LOG open as fd 3
// (not O_APPEND: its offset must survive), an eventfd holding 5 as fd 4, and a 128 KiB pipe
// (read end fd 5, non-blocking; write end fd 6) holding unread bytes, an epoll (fd 7) watching
// fds 5 and 4; SIGUSR2 stays pending
// (blocked everywhere) and RLIMIT_NOFILE is 900. Reports `area`,
// `pages`, `log_fd`.
//
// Command `detach` answers READY, points fds 0, 1 and 2 at /dev/null (so the process holds no
// pipe to the test) and from then on answers only signals: each SIGUSR1 makes the main thread
// verify everything and append one line to LOG:
//   `CHECK n=N PASS ticks=T workers=C1,C2… handled=H` or `CHECK n=N FAIL reason`.
// The process exits by itself after LIFETIME_S seconds (its parent may be gone: a restored
// process is the child of whoever restored it).
#define _GNU_SOURCE
#include "scenario.h"
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#define PAGE 4096
#define MAX_WORKERS 8
#define HEAP_BYTES (256 * 1024)
#define PIPE_TEXT "unread bytes in the pipe"


static uint64_t *area;
static size_t area_pages;
static unsigned char *heap_block;
static int workers;
static int log_fd = -1;
static double lifetime;
static _Atomic uint64_t ticks;
static _Atomic uint64_t counts[MAX_WORKERS];
static _Atomic int tls_failures;
static volatile sig_atomic_t check_requested;
static _Atomic uint64_t handled;
static int checks;
static __thread uint64_t tls_marker;

static uint64_t word(size_t page, size_t index) { return ((uint64_t)page << 20) ^ (index * 0x9e3779b97f4a7c15ULL) ^ 0x5a5a; }

static void on_usr1(int sig) {
    (void)sig;
    handled++;
    check_requested = 1;
}

static void *ticker(void *arg) {
    (void)arg;
    struct timespec start, next;
    clock_gettime(CLOCK_MONOTONIC, &start);
    next = start;
    for (;;) {
        next.tv_nsec += 10 * 1000 * 1000;
        if (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0) {}
        ticks++;
        if (next.tv_sec - start.tv_sec > lifetime) _exit(0);
    }
    return NULL;
}

static void *worker(void *arg) {
    int index = (int)(intptr_t)arg;
    tls_marker = 0xabcdef00ULL + (uint64_t)index;
    struct timespec pause = { 0, 5 * 1000 * 1000 };
    for (;;) {
        if (tls_marker != 0xabcdef00ULL + (uint64_t)index) tls_failures++;
        counts[index]++;
        nanosleep(&pause, NULL);  // relative: restored as interrupted (EINTR), which the loop absorbs
    }
    return NULL;
}

static void log_line(const char *text) {
    if (write(log_fd, text, strlen(text)) < 0) _exit(3);
}

static void self_check(void) {
    char line[512];
    checks++;
    for (size_t p = 0; p < area_pages; p++)
        for (size_t i = 0; i < PAGE / 8; i++)
            if (area[p * (PAGE / 8) + i] != word(p, i)) {
                snprintf(line, sizeof line, "CHECK n=%d FAIL area page %zu word %zu\n", checks, p, i);
                log_line(line);
                return;
            }
    for (size_t i = 0; i < HEAP_BYTES; i++)
        if (heap_block[i] != (unsigned char)(i * 7 + 3)) {
            snprintf(line, sizeof line, "CHECK n=%d FAIL heap byte %zu\n", checks, i);
            log_line(line);
            return;
        }
    struct sigaction action;
    sigaction(SIGPIPE, NULL, &action);
    if (action.sa_handler != SIG_IGN) { snprintf(line, sizeof line, "CHECK n=%d FAIL SIGPIPE not ignored\n", checks); log_line(line); return; }
    sigaction(SIGUSR1, NULL, &action);
    if (action.sa_handler != on_usr1) { snprintf(line, sizeof line, "CHECK n=%d FAIL SIGUSR1 handler lost\n", checks); log_line(line); return; }
    // The epoll reports both watched descriptors ready, with their data.
    struct epoll_event ready[4];
    int count = epoll_wait(7, ready, 4, 0);
    uint64_t seen = 0;
    for (int e = 0; e < count; e++) seen += ready[e].data.u64;
    if (count != 2 || seen != 0x1234 + 0x42) {
        snprintf(line, sizeof line, "CHECK n=%d FAIL epoll (%d ready)\n", checks, count);
        log_line(line);
        return;
    }
    // The pipe still holds its bytes (read, then put back), its capacity and its flags.
    char text[64] = { 0 };
    ssize_t got = read(5, text, sizeof text - 1);
    if (got != (ssize_t)strlen(PIPE_TEXT) || strcmp(text, PIPE_TEXT) != 0 || write(6, text, (size_t)got) != got
        || fcntl(5, F_GETPIPE_SZ) != 128 * 1024 || !(fcntl(5, F_GETFL) & O_NONBLOCK)) {
        snprintf(line, sizeof line, "CHECK n=%d FAIL pipe (%zd bytes: %s)\n", checks, got, text);
        log_line(line);
        return;
    }
    if (tls_failures) { snprintf(line, sizeof line, "CHECK n=%d FAIL thread-local marker changed\n", checks); log_line(line); return; }
    int length = snprintf(line, sizeof line, "CHECK n=%d PASS ticks=%llu workers=", checks, (unsigned long long)ticks);
    for (int w = 0; w < workers; w++) length += snprintf(line + length, sizeof line - length, "%s%llu", w ? "," : "", (unsigned long long)counts[w]);
    snprintf(line + length, sizeof line - length, " handled=%llu\n", (unsigned long long)handled);
    log_line(line);
}

static int restore_setup(int argc, char **argv) {
    if (argc < 4) return -1;
    size_t mib = (size_t)atol(argv[1]);
    workers = atoi(argv[2]);
    lifetime = atof(argv[3]);
    if (workers < 0 || workers > MAX_WORKERS) return -1;
    // The harness made this process die with the test; a restored copy outlives its restorer's
    // thread instead, and ends after LIFETIME_S.
    prctl(PR_SET_PDEATHSIG, 0);
    log_fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd != 3) return -1;
    log_line("START\n");
    // fd 4: an eventfd holding 5, non-blocking and close-on-exec, for the test to find again.
    if (eventfd(5, EFD_NONBLOCK | EFD_CLOEXEC) != 4) return -1;
    // fds 5 and 6: a pipe of 128 KiB holding PIPE_TEXT unread, its read end non-blocking.
    int ends[2];
    if (pipe2(ends, 0) != 0 || ends[0] != 5 || ends[1] != 6) return -1;
    if (fcntl(5, F_SETFL, O_NONBLOCK) != 0 || fcntl(5, F_SETPIPE_SZ, 128 * 1024) < 0) return -1;
    if (write(6, PIPE_TEXT, strlen(PIPE_TEXT)) != (ssize_t)strlen(PIPE_TEXT)) return -1;
    // fd 7: an epoll watching the pipe's read end (data 0x1234) and the eventfd (data 0x42).
    if (epoll_create1(EPOLL_CLOEXEC) != 7) return -1;
    struct epoll_event watch = { .events = EPOLLIN, .data.u64 = 0x1234 };
    if (epoll_ctl(7, EPOLL_CTL_ADD, 5, &watch) != 0) return -1;
    watch.data.u64 = 0x42;
    if (epoll_ctl(7, EPOLL_CTL_ADD, 4, &watch) != 0) return -1;
    area_pages = mib * 256;
    area = mmap(NULL, area_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return -1;
    for (size_t p = 0; p < area_pages; p++)
        for (size_t i = 0; i < PAGE / 8; i++) area[p * (PAGE / 8) + i] = word(p, i);
    heap_block = malloc(HEAP_BYTES);
    if (!heap_block) return -1;
    for (size_t i = 0; i < HEAP_BYTES; i++) heap_block[i] = (unsigned char)(i * 7 + 3);
    struct sigaction action = { 0 };
    action.sa_handler = on_usr1;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGUSR1, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
    // Only the main thread takes SIGUSR1, inside sigsuspend: the threads inherit it blocked.
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigaddset(&usr1, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    // A signal pending for the whole process (SIGUSR2, blocked everywhere) and an open-files
    // limit of 900: both must come back.
    kill(getpid(), SIGUSR2);
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = 900;
    if (files.rlim_max < 900) files.rlim_max = 900;
    if (setrlimit(RLIMIT_NOFILE, &files) != 0) return -1;
    pthread_t thread;
    if (pthread_create(&thread, NULL, ticker, NULL) != 0) return -1;
    for (int w = 0; w < workers; w++)
        if (pthread_create(&thread, NULL, worker, (void *)(intptr_t)w) != 0) return -1;
    scenario_report("area", "0x%llx", (unsigned long long)(uintptr_t)area);
    scenario_report("pages", "%zu", area_pages);
    scenario_report("log_fd", "%d", log_fd);
    return 0;
}

static int restore_step(const char *command) {
    if (strcmp(command, "detach") != 0) return -1;
    scenario_detach_standard_streams();
    sigset_t waiting;
    sigprocmask(SIG_BLOCK, NULL, &waiting);
    sigdelset(&waiting, SIGUSR1);
    for (;;) {
        while (!check_requested) sigsuspend(&waiting);
        check_requested = 0;
        self_check();
    }
}

SCENARIO(restore, restore_setup, restore_step)
