// Scenarios for the tracer and syscall injection: threads blocked in system calls, signal
// counters, threads that come and go, and a process that traces another.
#define _GNU_SOURCE
#include "scenario.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static void sleep_ms(long ms) {
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&t, &t) == -1 && errno == EINTR) {}
}

// MARK: inject — a thread blocked in read(), a thread in nanosleep(), a pipe to write into.

static int inject_pipe[2];   // the test injects write(2) into inject_pipe[1]; `drain` reads it
static int reader_pipe[2];   // the reader thread blocks in read(reader_pipe[0]); `feed` wakes it
static volatile int reader_bytes;
static volatile long sleeper_rounds;
static volatile pid_t reader_tid, sleeper_tid;

static void *reader_main(void *arg) {
    (void)arg;
    reader_tid = (pid_t)syscall(SYS_gettid);
    char byte;
    for (;;) {
        ssize_t n = read(reader_pipe[0], &byte, 1);
        if (n == 1) __atomic_add_fetch(&reader_bytes, 1, __ATOMIC_SEQ_CST);
        else if (n == 0 || errno != EINTR) scenario_fail("reader: read returned %zd errno %d", n, errno);
    }
    return NULL;
}

static void *sleeper_main(void *arg) {
    (void)arg;
    sleeper_tid = (pid_t)syscall(SYS_gettid);
    for (;;) {
        struct timespec t = { 0, 2000000 };
        // No EINTR retry: a restarted or interrupted nanosleep both count as progress.
        nanosleep(&t, NULL);
        __atomic_add_fetch(&sleeper_rounds, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static int inject_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    if (pipe(inject_pipe) != 0 || pipe(reader_pipe) != 0) return -1;
    fcntl(inject_pipe[0], F_SETFL, O_NONBLOCK);
    pthread_t thread;
    if (pthread_create(&thread, NULL, reader_main, NULL) != 0) return -1;
    if (pthread_create(&thread, NULL, sleeper_main, NULL) != 0) return -1;
    while (!reader_tid || !sleeper_tid) sleep_ms(1);
    sleep_ms(10);  // let both threads reach their blocking calls
    scenario_report("pipe_read", "%d", inject_pipe[0]);
    scenario_report("pipe_write", "%d", inject_pipe[1]);
    scenario_report("reader_tid", "%d", reader_tid);
    scenario_report("sleeper_tid", "%d", sleeper_tid);
    return 0;
}

static int inject_step(const char *command) {
    if (strcmp(command, "drain") == 0) {
        // Reports the bytes waiting in the pipe as hex (`data=none` when empty).
        unsigned char bytes[256];
        ssize_t n = read(inject_pipe[0], bytes, sizeof bytes);
        char hex[sizeof bytes * 2 + 1] = "none";
        for (ssize_t i = 0; i < n; i++) sprintf(hex + 2 * i, "%02x", bytes[i]);
        scenario_report("data", "%s", hex);
        return 0;
    }
    if (strcmp(command, "feed") == 0) {
        // Wakes the reader with one byte and waits until it has counted it.
        int before = reader_bytes;
        if (write(reader_pipe[1], "x", 1) != 1) return -1;
        for (int i = 0; i < 2000 && reader_bytes == before; i++) sleep_ms(1);
        scenario_report("reader_bytes", "%d", reader_bytes);
        return 0;
    }
    if (strcmp(command, "rounds") == 0) {
        scenario_report("sleeper_rounds", "%ld", sleeper_rounds);
        return 0;
    }
    return -1;
}
SCENARIO(inject, inject_setup, inject_step)

// MARK: signals — counts SIGUSR1 and SIGUSR2 deliveries to its handler, and keeps the last
// sigqueue value of each.

static volatile sig_atomic_t usr1_count, usr2_count, usr1_value = -1, usr2_value = -1;

static void count_signal(int signal, siginfo_t *info, void *context) {
    (void)context;
    int value = info->si_code == SI_QUEUE ? info->si_value.sival_int : -1;
    if (signal == SIGUSR1) { usr1_count++; usr1_value = value; }
    else { usr2_count++; usr2_value = value; }
}

static int signals_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = count_signal;
    action.sa_flags = SA_RESTART | SA_SIGINFO;
    if (sigaction(SIGUSR1, &action, NULL) != 0 || sigaction(SIGUSR2, &action, NULL) != 0) return -1;
    return 0;
}

/// `count` reports `usr1=N usr2=M usr1_value=V usr2_value=W` (-1: not sent by sigqueue); `block`/`unblock` mask SIGUSR1 (the process has one thread).
static int signals_step(const char *command) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    if (strcmp(command, "block") == 0) return sigprocmask(SIG_BLOCK, &set, NULL);
    if (strcmp(command, "unblock") == 0) {
        if (sigprocmask(SIG_UNBLOCK, &set, NULL) != 0) return -1;
    } else if (strcmp(command, "count") != 0) {
        return -1;
    }
    scenario_report("usr1", "%d", (int)usr1_count);
    scenario_report("usr2", "%d", (int)usr2_count);
    scenario_report("usr1_value", "%d", (int)usr1_value);
    scenario_report("usr2_value", "%d", (int)usr2_value);
    return 0;
}
SCENARIO(signals, signals_setup, signals_step)

// MARK: spawner — a thread that keeps creating short-lived threads.

static volatile long spawned;

static void *short_lived(void *arg) {
    (void)arg;
    struct timespec t = { 0, 100000 };
    nanosleep(&t, NULL);
    return NULL;
}

static void *spawner_main(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t threads[4];
        int started = 0;
        for (int i = 0; i < 4; i++) started += pthread_create(&threads[started], NULL, short_lived, NULL) == 0;
        for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
        __atomic_add_fetch(&spawned, started, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static int spawner_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    pthread_t thread;
    if (pthread_create(&thread, NULL, spawner_main, NULL) != 0) return -1;
    while (spawned < 8) sleep_ms(1);
    return 0;
}

/// `spawned` reports how many short-lived threads have run so far.
static int spawner_step(const char *command) {
    if (strcmp(command, "spawned") != 0) return -1;
    scenario_report("spawned", "%ld", spawned);
    return 0;
}
SCENARIO(spawner, spawner_setup, spawner_step)

// MARK: tracer-of PID — holds another process with PTRACE_SEIZE.

static int tracer_of_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    pid_t tracee = (pid_t)atoi(argv[0]);
    if (ptrace(PTRACE_SEIZE, tracee, NULL, NULL) != 0) scenario_fail("PTRACE_SEIZE %d: errno %d", tracee, errno);
    scenario_report("tracee", "%d", tracee);
    return 0;
}
// Registered by hand: the SCENARIO macro cannot spell a name with a hyphen.
static scenario scenario_tracer_of = { "tracer-of", tracer_of_setup, NULL, 0 };
__attribute__((constructor)) static void register_tracer_of(void) { scenario_register(&scenario_tracer_of); }

// MARK: tree — two child processes (the first with an extra thread and a child of its own).

static void *pause_forever(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

/// Turns the calling fresh child into a quiet descendant: no harness pipes, dies with its parent.
static void become_descendant(pid_t parent, int ready_fd, int extra_thread) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    int null_fd = open("/dev/null", O_RDWR);
    dup2(null_fd, 0);
    dup2(null_fd, 1);
    close(null_fd);
    if (extra_thread) {
        pthread_t thread;
        pthread_create(&thread, NULL, pause_forever, NULL);
    }
    pid_t self = getpid();
    if (write(ready_fd, &self, sizeof self) != sizeof self) _exit(1);
}

static int tree_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    int ready[2];
    if (pipe(ready) != 0) return -1;
    pid_t root = getpid();
    pid_t first = fork();
    if (first == 0) {
        become_descendant(root, ready[1], 1);
        pid_t me = getpid();
        if (fork() == 0) {
            become_descendant(me, ready[1], 0);
            for (;;) pause();
        }
        for (;;) pause();
    }
    pid_t second = fork();
    if (second == 0) {
        become_descendant(root, ready[1], 0);
        for (;;) pause();
    }
    pid_t grandchild = 0;
    for (int i = 0; i < 3; i++) {
        pid_t pid;
        if (read(ready[0], &pid, sizeof pid) != sizeof pid) return -1;
        if (pid != first && pid != second) grandchild = pid;
    }
    close(ready[0]);
    close(ready[1]);
    scenario_report("first", "%d", first);
    scenario_report("second", "%d", second);
    scenario_report("grandchild", "%d", grandchild);
    return 0;
}
SCENARIO(tree, tree_setup, NULL)

// MARK: vfork-wait — a thread stuck waiting for a vfork child that waits, in turn, for the
// command `end-vfork` (a byte on a pipe): how long it is stuck is the test's to say, not a clock's.

static int vfork_release[2];
static volatile pid_t vforker_tid;

static void *vforker_main(void *arg) {
    (void)arg;
    vforker_tid = (pid_t)syscall(SYS_gettid);
    pid_t child = vfork();
    if (child == 0) {
        // Shares the parent's memory: only raw system calls until _exit.
        char byte;
        while (syscall(SYS_read, vfork_release[0], &byte, 1) < 0) {}
        _exit(0);
    }
    if (child > 0) waitpid(child, NULL, 0);
    for (;;) pause();
    return NULL;
}

static int vfork_wait_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    if (pipe(vfork_release) != 0) return -1;
    pthread_t thread;
    if (pthread_create(&thread, NULL, vforker_main, NULL) != 0) return -1;
    while (!vforker_tid) sleep_ms(1);
    sleep_ms(20);  // let it reach the vfork wait (the test checks it did)
    scenario_report("vforker_tid", "%d", vforker_tid);
    return 0;
}

static int vfork_wait_step(const char *command) {
    if (strcmp(command, "end-vfork") != 0) return -1;
    return write(vfork_release[1], "x", 1) == 1 ? 0 : -1;
}
// Registered by hand: the SCENARIO macro cannot spell a name with a hyphen.
static scenario scenario_vfork_wait = { "vfork-wait", vfork_wait_setup, vfork_wait_step, 0 };
__attribute__((constructor)) static void register_vfork_wait(void) { scenario_register(&scenario_vfork_wait); }

// MARK: leaderless — the main thread has exited (pthread_exit) while a worker and the command
// thread run on. The kernel keeps the thread-group leader as a zombie until the last thread
// exits: /proc/PID/stat says Z, /proc/PID/maps and /proc/PID/fd are empty.

enum { leaderless_page_count = 16 };
static unsigned char *leaderless_pages;
static int leaderless_pipe[2];
static volatile long leaderless_rounds;
static volatile pid_t leaderless_worker_tid;
static volatile int leaderless_worker_ended;
static long leaderless_page_size;

static unsigned char leaderless_byte(long page) { return (unsigned char)(page * 7 + 1); }

static void *leaderless_worker(void *arg) {
    (void)arg;
    leaderless_worker_tid = (pid_t)syscall(SYS_gettid);
    while (!leaderless_worker_ended) {
        sleep_ms(1);
        __atomic_add_fetch(&leaderless_rounds, 1, __ATOMIC_SEQ_CST);
    }
    return NULL;
}

static int leaderless_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    leaderless_page_size = sysconf(_SC_PAGESIZE);
    leaderless_pages = mmap(NULL, leaderless_page_count * leaderless_page_size, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (leaderless_pages == MAP_FAILED || pipe(leaderless_pipe) != 0) return -1;
    for (long page = 0; page < leaderless_page_count; page++)
        memset(leaderless_pages + page * leaderless_page_size, leaderless_byte(page), leaderless_page_size);
    pthread_t thread;
    if (pthread_create(&thread, NULL, leaderless_worker, NULL) != 0) return -1;
    while (!leaderless_worker_tid) sleep_ms(1);
    scenario_report("pages", "0x%lx", (unsigned long)leaderless_pages);
    scenario_report("page_count", "%d", leaderless_page_count);
    scenario_report("pipe_read", "%d", leaderless_pipe[0]);
    scenario_report("pipe_write", "%d", leaderless_pipe[1]);
    scenario_report("worker_tid", "%d", leaderless_worker_tid);
    return 0;
}

static void leaderless_main_thread(void) { pthread_exit(NULL); }

/// The state of the main thread as `/proc/self/task/PID/stat` shows it ('?' when unreadable).
static char leaderless_leader_state(void) {
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", getpid());
    int fd = open(path, O_RDONLY);
    if (fd < 0) return '?';
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return '?';
    text[n] = 0;
    char *end = strrchr(text, ')');
    return end && end[1] == ' ' ? end[2] : '?';
}

/// `leader` waits (up to 5 s) until the main thread is a zombie and reports `leader_state=`;
/// `rounds` reports how often the worker has woken; `end-worker` ends the worker thread and waits
/// until it is gone, leaving the command thread the only live one.
static int leaderless_step(const char *command) {
    if (strcmp(command, "leader") == 0) {
        for (int i = 0; i < 5000 && leaderless_leader_state() != 'Z'; i++) sleep_ms(1);
        scenario_report("leader_state", "%c", leaderless_leader_state());
        return 0;
    }
    if (strcmp(command, "rounds") == 0) {
        scenario_report("rounds", "%ld", leaderless_rounds);
        return 0;
    }
    if (strcmp(command, "end-worker") == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%d", leaderless_worker_tid);
        leaderless_worker_ended = 1;
        for (int i = 0; i < 5000 && access(path, F_OK) == 0; i++) sleep_ms(1);
        return access(path, F_OK) == 0 ? -1 : 0;
    }
    return -1;
}

/// Intact: every page holds its own byte, the pipe passes a byte, and the worker still runs
/// (unless `end-worker` ended it).
static int leaderless_check(char *problem, size_t size) {
    for (long page = 0; page < leaderless_page_count; page++)
        for (long i = 0; i < leaderless_page_size; i++)
            if (leaderless_pages[page * leaderless_page_size + i] != leaderless_byte(page)) {
                snprintf(problem, size, "page %ld byte %ld changed", page, i);
                return -1;
            }
    char byte = 0;
    if (write(leaderless_pipe[1], "L", 1) != 1 || read(leaderless_pipe[0], &byte, 1) != 1 || byte != 'L') {
        snprintf(problem, size, "pipe broken");
        return -1;
    }
    if (leaderless_worker_ended) return 0;
    long before = leaderless_rounds;
    for (int i = 0; i < 1000 && leaderless_rounds == before; i++) sleep_ms(1);
    if (leaderless_rounds == before) {
        snprintf(problem, size, "worker stopped");
        return -1;
    }
    return 0;
}
static scenario scenario_leaderless = {
    "leaderless", leaderless_setup, leaderless_step, 0, leaderless_main_thread, leaderless_check };
__attribute__((constructor)) static void register_leaderless(void) { scenario_register(&scenario_leaderless); }
