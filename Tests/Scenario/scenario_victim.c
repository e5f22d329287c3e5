// victim MODE — a target for killing Mitosis in the middle of a syscall injection. Its main
// thread (the one `mitosis dump` injects into) loops in one state, checking every result:
//   sleep: 20 ms nanosleep (relative: restarted through the kernel's restart block)
//   nap:   1 s nanosleep, long enough for a test to stop and continue the victim first, so
//          that Mitosis finds the sleep resumed through restart_syscall
//   read:  read(2) of one byte from a pipe a ticker thread feeds every 10 ms
//   futex: FUTEX_WAIT (no timeout: -ERESTARTSYS) on a word a ticker thread bumps every 10 ms
//   busy:  floating-point and integer work in user space, never in a system call
// Two threads run besides, rewriting and verifying their pages every 10 ms.
// Every thread runs with round-up rounding (MXCSR) and keeps known values in registers across
// its system calls, so a register or FPU state that comes back wrong is seen. Command `check`
// waits for every thread to make progress (up to 5 s: the victim runs at nice 19, and tests
// run many at once) and reports check=PASS or check=FAIL:<first problem>.
#define _GNU_SOURCE
#include "scenario.h"
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xmmintrin.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define BUSY_THREADS 2
#define PAGES 64

static const char *mode;
static volatile long main_rounds, busy_rounds[BUSY_THREADS];
static char problem[128];
static pthread_mutex_t problem_lock = PTHREAD_MUTEX_INITIALIZER;
static int feed_pipe[2];
static volatile uint32_t futex_word;
static volatile uint64_t seed_source = 12345;

static void report_problem(const char *format, long value) {
    pthread_mutex_lock(&problem_lock);
    if (!problem[0]) snprintf(problem, sizeof problem, format, value);
    pthread_mutex_unlock(&problem_lock);
}

static void round_up(void) { _mm_setcsr((_mm_getcsr() & ~0x6000u) | 0x4000u); }
static int rounds_up(void) { return (_mm_getcsr() & 0x6000u) == 0x4000u; }

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/// A system call with six arguments whose registers, callee-saved registers and one xmm
/// register must all come back unchanged; anything else is reported.
static long checked_syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) {
    register long r10 __asm__("r10") = a4, r8 __asm__("r8") = a5, r9 __asm__("r9") = a6;
    register long rbx __asm__("rbx") = 0x1b1b1b1b1b1b1b1bL, r12 __asm__("r12") = 0x1212121212121212L;
    register long r13 __asm__("r13") = 0x1313131313131313L, r14 __asm__("r14") = 0x1414141414141414L;
    register long r15 __asm__("r15") = 0x1515151515151515L;
    long rdi = a1, rsi = a2, rdx = a3, result;
    double held = 3.0 / 7.0;
    __asm__ volatile("syscall"
                     : "=a"(result), "+D"(rdi), "+S"(rsi), "+d"(rdx), "+r"(r10), "+r"(r8), "+r"(r9),
                       "+r"(rbx), "+r"(r12), "+r"(r13), "+r"(r14), "+r"(r15), "+x"(held)
                     : "0"(number)
                     : "rcx", "r11", "memory");
    if (rdi != a1 || rsi != a2 || rdx != a3 || r10 != a4 || r8 != a5 || r9 != a6) report_problem("argument-registers-changed:%ld", number);
    if (rbx != 0x1b1b1b1b1b1b1b1bL || r12 != 0x1212121212121212L || r13 != 0x1313131313131313L ||
        r14 != 0x1414141414141414L || r15 != 0x1515151515151515L) report_problem("callee-saved-registers-changed:%ld", number);
    if (held != 3.0 / 7.0) report_problem("xmm-register-changed:%ld", number);
    if (!rounds_up()) report_problem("rounding-mode-lost:%ld", number);
    return result;
}

/// Work whose result depends on every step; computed twice, the results must agree.
static double work(void) {
    double x = (double)seed_source * 1e-3;
    for (int i = 1; i <= 3000; i++) x = x * 1.0000001 + 0.5 / i;
    return x;
}

static void busy_round(void) {
    double a = work(), b = work();
    if (a != b) report_problem("computation-diverged:%ld", 0);
    if (!rounds_up()) report_problem("rounding-mode-lost:%ld", 0);
}

static void *busy_main(void *arg) {
    long index = (long)arg;
    round_up();
    static uint64_t pages[BUSY_THREADS][PAGES][512];
    for (uint64_t generation = 1;; generation++) {
        for (int page = 0; page < PAGES; page++) {
            uint64_t *words = pages[index][page];
            for (int w = 0; w < 512; w++) {
                if (words[w] != (generation - 1) * 1000003 + page * 512 + w && generation > 1) report_problem("page-content-wrong:%ld", page);
                words[w] = generation * 1000003 + page * 512 + w;
            }
        }
        busy_round();
        __atomic_add_fetch(&busy_rounds[index], 1, __ATOMIC_SEQ_CST);
        struct timespec t = { 0, 10000000L };  // many victims run at once in tests: spare the CPU
        nanosleep(&t, NULL);
    }
    return NULL;
}

static void *ticker_main(void *arg) {
    (void)arg;
    for (unsigned char byte = 0;; byte++) {
        struct timespec t = { 0, 10000000L };
        nanosleep(&t, NULL);
        if (strcmp(mode, "read") == 0 && write(feed_pipe[1], &byte, 1) != 1) report_problem("feed-failed:%ld", errno);
        if (strcmp(mode, "futex") == 0) {
            __atomic_add_fetch(&futex_word, 1, __ATOMIC_SEQ_CST);
            syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        }
    }
    return NULL;
}

static void victim_main_thread(void) {
    round_up();
    unsigned char expected = 0;
    for (;;) {
        if (strcmp(mode, "sleep") == 0 || strcmp(mode, "nap") == 0) {
            long length = strcmp(mode, "nap") == 0 ? 1000000000L : 20000000L;
            struct timespec t = { length / 1000000000L, length % 1000000000L };
            long start = now_ns();
            long r = checked_syscall(SYS_nanosleep, (long)&t, 0, 0, 0, 0, 0);
            if (r != 0) report_problem("nanosleep-returned:%ld", r);
            else if (now_ns() - start < length) report_problem("nanosleep-returned-early:%ld", now_ns() - start);
        } else if (strcmp(mode, "read") == 0) {
            unsigned char byte;
            long r = checked_syscall(SYS_read, feed_pipe[0], (long)&byte, 1, 0, 0, 0);
            if (r != 1) report_problem("read-returned:%ld", r);
            else if (byte != expected) report_problem("read-wrong-byte:%ld", byte);
            expected = (unsigned char)(byte + 1);
        } else if (strcmp(mode, "futex") == 0) {
            uint32_t seen = futex_word;
            long r = checked_syscall(SYS_futex, (long)&futex_word, FUTEX_WAIT_PRIVATE, seen, 0, 0, 0);
            if (r != 0 && r != -EAGAIN) report_problem("futex-returned:%ld", r);
        } else {
            busy_round();
        }
        __atomic_add_fetch(&main_rounds, 1, __ATOMIC_SEQ_CST);
    }
}

static int victim_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    mode = argv[0];
    if (strcmp(mode, "sleep") && strcmp(mode, "nap") && strcmp(mode, "read") && strcmp(mode, "futex") && strcmp(mode, "busy")) return -1;
    if (pipe(feed_pipe) != 0) return -1;
    // Tests run dozens of victims beside the Mitosis processes they kill: let those run first.
    if (setpriority(PRIO_PROCESS, 0, 19) != 0) return -1;
    pthread_t thread;
    for (long i = 0; i < BUSY_THREADS; i++) if (pthread_create(&thread, NULL, busy_main, (void *)i) != 0) return -1;
    if (pthread_create(&thread, NULL, ticker_main, NULL) != 0) return -1;
    return 0;
}

static int victim_step(const char *command) {
    if (strcmp(command, "check") != 0) return -1;
    long main_before = main_rounds, busy_before[BUSY_THREADS];
    for (int i = 0; i < BUSY_THREADS; i++) busy_before[i] = busy_rounds[i];
    int progressed = 0;
    for (int waited = 0; waited < 5000 && !progressed; waited++) {
        struct timespec t = { 0, 1000000L };
        nanosleep(&t, NULL);
        progressed = main_rounds >= main_before + 2;
        for (int i = 0; i < BUSY_THREADS; i++) progressed = progressed && busy_rounds[i] > busy_before[i];
    }
    pthread_mutex_lock(&problem_lock);
    if (!progressed && !problem[0]) snprintf(problem, sizeof problem, "no-progress:main=%ld", main_rounds - main_before);
    scenario_report("check", "%s%s", problem[0] ? "FAIL:" : "PASS", problem);
    pthread_mutex_unlock(&problem_lock);
    scenario_report("main_rounds", "%ld", main_rounds);
    return 0;
}

static scenario scenario_victim = { "victim", victim_setup, victim_step, 0, victim_main_thread };
__attribute__((constructor)) static void register_victim(void) { scenario_register(&scenario_victim); }
