// `acceptance LOG MIB WORKERS LIFETIME_S [UID]`: the self-checking program of restore's
// acceptance test (issue 11): it checks, from the inside, that a restored copy of itself is
// whole and alive.
//
// It leads its own session, appends to LOG (fd 3, O_APPEND), holds MIB MiB of patterned memory,
// runs WORKERS counting threads (checking their thread-local marker; worker 0 at nice 5, worker
// 1 under SCHED_BATCH), a ticker on CLOCK_MONOTONIC (absolute clock_nanosleep every 10 ms,
// recording the longest gap between ticks), two POSIX timers on CLOCK_MONOTONIC with ids 0 and 2
// (a gap: timer 1 was deleted) — timer 0 every 20 ms to the process (SIGRTMIN, sigev_value
// 0xfeed), timer 2 every 50 ms to worker 0 alone (SIGRTMIN+1, SIGEV_THREAD_ID) — ITIMER_REAL
// every 30 ms (SIGALRM), and a SIGUSR1 handler on an alternate signal stack. It sets a timer
// slack, disables transparent huge pages, sets ADDR_NO_RANDOMIZE in its personality and
// no_new_privs, and with UID it runs as UID/GID UID with supplementary groups UID+1, UID+2.
//
// Its check (the harness's `check` command before `detach`; after `detach`, each SIGUSR1 makes
// the main thread run it and append `CHECK n=N PASS ticks=T gap_ms=G timers=A,B,R
// handled=H` or `CHECK n=N FAIL reason` to LOG) verifies: the whole memory pattern, the
// thread-local markers, that the ticker and every worker advanced and every timer fired since
// the previous check (each notified where it should be), that the SIGUSR1 handler ran on the
// alternate stack, and that ids, groups, session, scheduling, personality, timer slack, THP
// and no_new_privs are as set. The process exits by itself after LIFETIME_S seconds.
#define _GNU_SOURCE
#include "scenario.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define PAGE 4096
#define MAX_WORKERS 8
#define SLACK_NS 123456
#define ALT_STACK_BYTES (64 * 1024)

static uint64_t *area;
static size_t area_pages;
static int workers;
static double lifetime;
static uid_t wanted_uid;
static int drop_ids;
static int dumpable_at_setup;
static _Atomic uint64_t ticks, max_gap_ns;
static uint64_t gap_at_check_ns;
static _Atomic uint64_t counts[MAX_WORKERS];
static _Atomic pid_t worker_tids[MAX_WORKERS];
static _Atomic int tls_failures, misdirected;
static _Atomic uint64_t fired_process_timer, fired_thread_timer, fired_itimer, handled;
static _Atomic int handler_off_stack;
static volatile sig_atomic_t check_requested;
static __thread uint64_t tls_marker;
static char alt_stack[ALT_STACK_BYTES] __attribute__((aligned(16)));
static timer_t process_timer, thread_timer;
static int checks;
// What the previous check saw, so that each check asks "did it advance since?".
static uint64_t last_ticks, last_counts[MAX_WORKERS], last_process_timer, last_thread_timer, last_itimer;

static uint64_t word(size_t page, size_t index) { return ((uint64_t)page << 24) ^ (index * 0xd6e8feb86659fd93ULL) ^ 0xa5a5; }

static void on_usr1(int sig) {
    (void)sig;
    char here;
    if (&here < alt_stack || &here >= alt_stack + ALT_STACK_BYTES) handler_off_stack = 1;
    handled++;
    check_requested = 1;
}

static void on_timer(int sig, siginfo_t *info, void *context) {
    (void)context;
    if (sig == SIGRTMIN) {
        if (info->si_code != SI_TIMER || info->si_value.sival_ptr != (void *)0xfeed) misdirected++;
        fired_process_timer++;
    } else {
        if (info->si_code != SI_TIMER || gettid() != worker_tids[0]) misdirected++;
        fired_thread_timer++;
    }
}

static void on_alarm(int sig) {
    (void)sig;
    fired_itimer++;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static void *ticker(void *arg) {
    (void)arg;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    uint64_t start = now_ns(), previous = start;
    for (;;) {
        next.tv_nsec += 10 * 1000 * 1000;
        if (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) != 0) {}
        uint64_t now = now_ns();
        if (now - previous > max_gap_ns) max_gap_ns = now - previous;
        previous = now;
        ticks++;
        if ((double)(now - start) / 1e9 > lifetime) _exit(0);
    }
    return NULL;
}

static void *worker(void *arg) {
    int index = (int)(intptr_t)arg;
    tls_marker = 0x5eed0000ULL + (uint64_t)index;
    if (index == 0) setpriority(PRIO_PROCESS, (id_t)gettid(), 5);
    if (index == 1) {
        struct sched_param none = { 0 };
        sched_setscheduler(0, SCHED_BATCH, &none);
    }
    worker_tids[index] = gettid();
    struct timespec pause = { 0, 5 * 1000 * 1000 };
    for (;;) {
        if (tls_marker != 0x5eed0000ULL + (uint64_t)index) tls_failures++;
        counts[index]++;
        nanosleep(&pause, NULL);
    }
    return NULL;
}

/// 0 when intact; else the first problem in `problem`.
static int acceptance_check(char *problem, size_t size) {
    checks++;
    for (size_t p = 0; p < area_pages; p++)
        for (size_t i = 0; i < PAGE / 8; i++)
            if (area[p * (PAGE / 8) + i] != word(p, i)) return snprintf(problem, size, "memory page %zu word %zu", p, i), -1;
    if (tls_failures) return snprintf(problem, size, "thread-local marker changed"), -1;
    if (misdirected) return snprintf(problem, size, "%d timer signals with wrong value or thread", misdirected), -1;
    if (handler_off_stack) return snprintf(problem, size, "SIGUSR1 handler ran off its alternate stack"), -1;
    // The longest gap between ticks since the last check, taken with the tick count.
    gap_at_check_ns = max_gap_ns;
    max_gap_ns = 0;
    uint64_t t = ticks, p = fired_process_timer, th = fired_thread_timer, r = fired_itimer;
    if (t <= last_ticks) return snprintf(problem, size, "ticker stopped at %llu", (unsigned long long)t), -1;
    for (int w = 0; w < workers; w++)
        if (counts[w] <= last_counts[w]) return snprintf(problem, size, "worker %d stopped", w), -1;
    if (p <= last_process_timer) return snprintf(problem, size, "timer 0 did not fire since the last check"), -1;
    if (workers > 0 && th <= last_thread_timer) return snprintf(problem, size, "timer 2 did not fire since the last check"), -1;
    if (r <= last_itimer) return snprintf(problem, size, "ITIMER_REAL did not fire since the last check"), -1;
    struct itimerspec spec;
    if (timer_gettime(process_timer, &spec) != 0 || spec.it_interval.tv_nsec != 20 * 1000 * 1000)
        return snprintf(problem, size, "timer 0 lost its period"), -1;
    if (getsid(0) != getpid() || getpgrp() != getpid()) return snprintf(problem, size, "session %d group %d", getsid(0), getpgrp()), -1;
    if (workers > 0 && getpriority(PRIO_PROCESS, (id_t)worker_tids[0]) != 5) return snprintf(problem, size, "worker 0 nice changed"), -1;
    if (workers > 1 && sched_getscheduler(worker_tids[1]) != SCHED_BATCH) return snprintf(problem, size, "worker 1 not SCHED_BATCH"), -1;
    if (personality(0xffffffff) != (PER_LINUX | ADDR_NO_RANDOMIZE)) return snprintf(problem, size, "personality 0x%x", personality(0xffffffff)), -1;
    if (prctl(PR_GET_TIMERSLACK) != SLACK_NS) return snprintf(problem, size, "timer slack %d", prctl(PR_GET_TIMERSLACK)), -1;
    if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1) return snprintf(problem, size, "THP no longer disabled"), -1;
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) return snprintf(problem, size, "no_new_privs cleared"), -1;
    if (prctl(PR_GET_DUMPABLE) != dumpable_at_setup) return snprintf(problem, size, "dumpable %d", prctl(PR_GET_DUMPABLE)), -1;
    stack_t stack;
    if (sigaltstack(NULL, &stack) != 0 || stack.ss_sp != alt_stack || stack.ss_size != ALT_STACK_BYTES)
        return snprintf(problem, size, "alternate signal stack lost"), -1;
    if (drop_ids) {
        uid_t ru, eu, su;
        gid_t rg, eg, sg, groups[8];
        getresuid(&ru, &eu, &su);
        getresgid(&rg, &eg, &sg);
        int n = getgroups(8, groups);
        if (ru != wanted_uid || eu != wanted_uid || su != wanted_uid || rg != wanted_uid || eg != wanted_uid || sg != wanted_uid)
            return snprintf(problem, size, "ids %u/%u/%u %u/%u/%u", ru, eu, su, rg, eg, sg), -1;
        if (n != 2 || groups[0] != wanted_uid + 1 || groups[1] != wanted_uid + 2) return snprintf(problem, size, "%d groups", n), -1;
    }
    last_ticks = t;
    for (int w = 0; w < workers; w++) last_counts[w] = counts[w];
    last_process_timer = p;
    last_thread_timer = th;
    last_itimer = r;
    return 0;
}

static void log_line(const char *text) {
    if (write(3, text, strlen(text)) < 0) _exit(3);
}

static int acceptance_setup(int argc, char **argv) {
    if (argc < 4) return -1;
    size_t mib = (size_t)atol(argv[1]);
    workers = atoi(argv[2]);
    lifetime = atof(argv[3]);
    if (workers < 0 || workers > MAX_WORKERS) return -1;
    drop_ids = argc > 4;
    if (drop_ids) wanted_uid = (uid_t)atol(argv[4]);
    // A restored copy outlives its restorer's thread: no parent-death signal; it ends after LIFETIME_S.
    prctl(PR_SET_PDEATHSIG, 0);
    if (setsid() < 0) return -1;
    if (open(argv[0], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) != 3) return -1;
    log_line("START\n");
    area_pages = mib * 256;
    area = mmap(NULL, area_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return -1;
    for (size_t p = 0; p < area_pages; p++)
        for (size_t i = 0; i < PAGE / 8; i++) area[p * (PAGE / 8) + i] = word(p, i);
    if (personality(PER_LINUX | ADDR_NO_RANDOMIZE) < 0) return -1;
    if (prctl(PR_SET_TIMERSLACK, SLACK_NS) != 0 || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    if (drop_ids) {
        gid_t groups[2] = { wanted_uid + 1, wanted_uid + 2 };
        if (setgroups(2, groups) != 0 || setresgid(wanted_uid, wanted_uid, wanted_uid) != 0 || setresuid(wanted_uid, wanted_uid, wanted_uid) != 0)
            return -1;
        // A change of ids made the process non-dumpable; it asks to be dumpable again, as a daemon
        // that wants core dumps does (and a checkpoint without --force needs).
        if (prctl(PR_SET_DUMPABLE, 1) != 0) return -1;
    }
    dumpable_at_setup = prctl(PR_GET_DUMPABLE);

    stack_t stack = { .ss_sp = alt_stack, .ss_size = ALT_STACK_BYTES, .ss_flags = 0 };
    if (sigaltstack(&stack, NULL) != 0) return -1;
    struct sigaction action = { 0 };
    sigemptyset(&action.sa_mask);
    action.sa_handler = on_usr1;
    action.sa_flags = SA_RESTART | SA_ONSTACK;
    sigaction(SIGUSR1, &action, NULL);
    action.sa_handler = on_alarm;
    action.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &action, NULL);
    action.sa_sigaction = on_timer;
    action.sa_flags = SA_RESTART | SA_SIGINFO;
    sigaction(SIGRTMIN, &action, NULL);
    sigaction(SIGRTMIN + 1, &action, NULL);
    // Only the main thread takes SIGUSR1, inside sigsuspend: the threads inherit it blocked.
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);

    pthread_t thread;
    if (pthread_create(&thread, NULL, ticker, NULL) != 0) return -1;
    for (int w = 0; w < workers; w++)
        if (pthread_create(&thread, NULL, worker, (void *)(intptr_t)w) != 0) return -1;
    for (int w = 0; w < workers; w++)
        while (!worker_tids[w]) usleep(1000);

    // Timer ids 0, 1, 2, then 1 deleted: the restore must bring back ids 0 and 2.
    timer_t spare;
    struct sigevent event = { 0 };
    event.sigev_notify = SIGEV_SIGNAL;
    event.sigev_signo = SIGRTMIN;
    event.sigev_value.sival_ptr = (void *)0xfeed;
    if (timer_create(CLOCK_MONOTONIC, &event, &process_timer) != 0 || timer_create(CLOCK_MONOTONIC, &event, &spare) != 0) return -1;
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = SIGRTMIN + 1;
    event._sigev_un._tid = workers > 0 ? worker_tids[0] : getpid();
    if (timer_create(CLOCK_MONOTONIC, &event, &thread_timer) != 0 || timer_delete(spare) != 0) return -1;
    struct itimerspec every20 = { { 0, 20 * 1000 * 1000 }, { 0, 20 * 1000 * 1000 } };
    struct itimerspec every50 = { { 0, 50 * 1000 * 1000 }, { 0, 50 * 1000 * 1000 } };
    if (timer_settime(process_timer, 0, &every20, NULL) != 0 || timer_settime(thread_timer, 0, &every50, NULL) != 0) return -1;
    struct itimerval every30 = { { 0, 30 * 1000 }, { 0, 30 * 1000 } };
    if (setitimer(ITIMER_REAL, &every30, NULL) != 0) return -1;
    scenario_report("area", "0x%llx", (unsigned long long)(uintptr_t)area);
    scenario_report("timers", "%ld,%ld", (long)(intptr_t)process_timer, (long)(intptr_t)thread_timer);
    for (int w = 0; w < workers; w++) scenario_report(w == 0 ? "worker0" : w == 1 ? "worker1" : "worker", "%d", worker_tids[w]);
    return 0;
}

static int acceptance_step(const char *command) {
    if (strcmp(command, "detach") != 0) return -1;
    scenario_detach_standard_streams();
    sigset_t waiting;
    sigprocmask(SIG_BLOCK, NULL, &waiting);
    sigdelset(&waiting, SIGUSR1);
    for (;;) {
        while (!check_requested) sigsuspend(&waiting);
        check_requested = 0;
        char problem[256] = "", line[512];
        if (acceptance_check(problem, sizeof problem) == 0)
            snprintf(line, sizeof line, "CHECK n=%d PASS ticks=%llu gap_ms=%llu timers=%llu,%llu,%llu handled=%llu\n", checks,
                     (unsigned long long)ticks, (unsigned long long)(gap_at_check_ns / 1000000), (unsigned long long)fired_process_timer,
                     (unsigned long long)fired_thread_timer, (unsigned long long)fired_itimer, (unsigned long long)handled);
        else
            snprintf(line, sizeof line, "CHECK n=%d FAIL %s\n", checks, problem);
        log_line(line);
    }
}

SCENARIO_CHECKED(acceptance, acceptance_setup, acceptance_step, acceptance_check)
