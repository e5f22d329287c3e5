// Threads with known call chains and known kernel state, for the stacks and thread-state tests.
//
// `stacks`: three named threads, each three calls deep, blocked in a known system call:
//   alpha: alpha_one → alpha_two → alpha_three → pause()          (SIGUSR1 and SIGUSR2 blocked,
//          SIGUSR1 pending, an alternate signal stack, nice 5)
//   beta:  beta_one → beta_two → beta_three → read() on a pipe
//   gamma: gamma_one → gamma_two → gamma_three → nanosleep()
// Reports `alpha=TID beta=TID gamma=TID altstack=ADDR altstack_size=N rseq_alpha=ADDR
// rseq_size=N tp_alpha=ADDR`, once every thread is inside its call.
//
// `stacks_corrupt`: two threads whose stacks no unwinder can walk to the end — `cycle`, whose
// saved frame pointer and return address point back into itself, and `wild`, blocked in pause()
// with its stack pointer aimed at unmapped memory. Reports `cycle=TID wild=TID`.
#define _GNU_SOURCE
#include "scenario.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/syscall.h>

// Keeps a call from becoming a tail call (which would remove its caller's frame).
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
#define CHAIN __attribute__((noinline, used))

static sem_t started;
static int pipe_fds[2];
static void *altstack;
static const size_t altstack_size = 65536;

typedef struct { pid_t tid; void *rseq; void *thread_pointer; } thread_fact;
static thread_fact facts[3];

static void announce(int index) {
    facts[index].tid = (pid_t)syscall(SYS_gettid);
    facts[index].thread_pointer = __builtin_thread_pointer();
    facts[index].rseq = __rseq_size > 0 ? (char *)__builtin_thread_pointer() + __rseq_offset : NULL;
    sem_post(&started);
}

CHAIN void alpha_three(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    stack_t stack = { .ss_sp = altstack, .ss_size = altstack_size, .ss_flags = 0 };
    sigaltstack(&stack, NULL);
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 5);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGUSR1);
    announce(0);
    for (;;) pause();
}
CHAIN void alpha_two(void) { alpha_three(); KEEP_FRAME(); }
CHAIN void alpha_one(void) { alpha_two(); KEEP_FRAME(); }

CHAIN void beta_three(void) {
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);  // whatever the spawning thread blocked
    announce(1);
    char byte;
    for (;;) if (read(pipe_fds[0], &byte, 1) <= 0 && errno != EINTR) pause();
}
CHAIN void beta_two(void) { beta_three(); KEEP_FRAME(); }
CHAIN void beta_one(void) { beta_two(); KEEP_FRAME(); }

CHAIN void gamma_three(void) {
    announce(2);
    struct timespec forever = { 1000000, 0 };
    for (;;) nanosleep(&forever, NULL);
}
CHAIN void gamma_two(void) { gamma_three(); KEEP_FRAME(); }
CHAIN void gamma_one(void) { gamma_two(); KEEP_FRAME(); }

static void *run_alpha(void *arg) { (void)arg; pthread_setname_np(pthread_self(), "alpha"); alpha_one(); return NULL; }
static void *run_beta(void *arg) { (void)arg; pthread_setname_np(pthread_self(), "beta"); beta_one(); return NULL; }
static void *run_gamma(void *arg) { (void)arg; pthread_setname_np(pthread_self(), "gamma"); gamma_one(); return NULL; }

/// Waits until thread `tid` sleeps inside system call `number` (so a freeze finds it there).
static int await_syscall(pid_t tid, long number) {
    char path[64], text[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    for (int attempt = 0; attempt < 2000; attempt++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) return -1;
        ssize_t n = read(fd, text, sizeof text - 1);
        close(fd);
        if (n > 0) {
            text[n] = 0;
            if (strtol(text, NULL, 10) == number) return 0;
        }
        usleep(1000);
    }
    return -1;
}

static int start_threads(void *(*runners[])(void *), int count) {
    sem_init(&started, 0, 0);
    for (int i = 0; i < count; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, runners[i], NULL) != 0) return -1;
    }
    for (int i = 0; i < count; i++) sem_wait(&started);
    return 0;
}

static int stacks_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    if (pipe(pipe_fds) != 0) return -1;
    altstack = malloc(altstack_size);
    void *(*runners[])(void *) = { run_alpha, run_beta, run_gamma };
    if (start_threads(runners, 3) != 0) return -1;
    if (await_syscall(facts[0].tid, SYS_pause) || await_syscall(facts[1].tid, SYS_read)
        || await_syscall(facts[2].tid, SYS_clock_nanosleep)) return -1;
    scenario_report("alpha", "%d", facts[0].tid);
    scenario_report("beta", "%d", facts[1].tid);
    scenario_report("gamma", "%d", facts[2].tid);
    scenario_report("altstack", "%lu", (unsigned long)altstack);
    scenario_report("altstack_size", "%zu", altstack_size);
    scenario_report("rseq_alpha", "%lu", (unsigned long)facts[0].rseq);
    scenario_report("rseq_size", "%u", __rseq_size);
    scenario_report("tp_alpha", "%lu", (unsigned long)facts[0].thread_pointer);
    return 0;
}
SCENARIO(stacks, stacks_setup, NULL)

/// Points the saved frame pointer and return address of its own frame back at itself, then
/// blocks: a frame-pointer or CFA walk from here finds the same frame again and again.
CHAIN void cycle_forever(void) {
    void **frame = __builtin_frame_address(0);
    announce(0);
    frame[0] = frame;                       // saved rbp → this frame
    frame[1] = (void *)cycle_forever + 4;   // return address → inside this function
    for (;;) syscall(SYS_pause);
}
static void *run_cycle(void *arg) { (void)arg; pthread_setname_np(pthread_self(), "cycle"); cycle_forever(); return NULL; }

/// Blocks every signal (none may be delivered on a stack that does not exist), then sits in
/// pause() with rsp and rbp aimed at an unmapped page.
static void *run_wild(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "wild");
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    announce(1);
    __asm__ volatile(
        "mov $0x10, %%rsp\n"
        "mov $0x18, %%rbp\n"
        "1: mov %0, %%eax\n"
        "syscall\n"
        "jmp 1b\n" :: "i"(SYS_pause) : "rax", "rcx", "r11", "memory");
    return NULL;
}

static int stacks_corrupt_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    void *(*runners[])(void *) = { run_cycle, run_wild };
    if (start_threads(runners, 2) != 0) return -1;
    if (await_syscall(facts[0].tid, SYS_pause) || await_syscall(facts[1].tid, SYS_pause)) return -1;
    scenario_report("cycle", "%d", facts[0].tid);
    scenario_report("wild", "%d", facts[1].tid);
    return 0;
}
SCENARIO(stacks_corrupt, stacks_corrupt_setup, NULL)
