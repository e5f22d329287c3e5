// rseq — a main thread that spins inside a restartable-sequences critical section (registered
// with glibc's own rseq area) forever: only an abort takes it out, and its abort handler counts
// and enters the section again. The kernel aborts a section the thread is preempted or signalled
// in, as long as the section pointer (`rseq_cs`) is set. Self-check: a signal to the main thread
// must abort the section (check=FAIL:not-aborted-by-a-signal when the thread was left spinning
// in a section the kernel no longer knows of — what an injected call did to it).
#define _GNU_SOURCE
#include "scenario.h"
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/rseq.h>

static volatile uint64_t rseq_aborts;
static pthread_t rseq_main;
static volatile int rseq_main_known;
struct rseq_cs mitosis_rseq_section __attribute__((aligned(32)));
extern char mitosis_rseq_start[], mitosis_rseq_post_commit[], mitosis_rseq_abort[];

static void rseq_ignore(int signal) { (void)signal; }

static int rseq_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    if (__rseq_size == 0) return -1;  // glibc did not register rseq (old kernel, or glibc.pthread.rseq=0)
    if (setpriority(PRIO_PROCESS, 0, 19) != 0) return -1;  // it spins: let the tests' other work go first
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = rseq_ignore;
    return sigaction(SIGUSR1, &action, NULL);
}

__attribute__((noinline)) static void rseq_spin(void) {
    mitosis_rseq_section.version = 0;
    mitosis_rseq_section.flags = 0;
    mitosis_rseq_section.start_ip = (uint64_t)mitosis_rseq_start;
    mitosis_rseq_section.post_commit_offset = (uint64_t)(mitosis_rseq_post_commit - mitosis_rseq_start);
    mitosis_rseq_section.abort_ip = (uint64_t)mitosis_rseq_abort;
    char *thread_pointer;
    __asm__ volatile("mov %%fs:0, %0" : "=r"(thread_pointer));
    struct rseq *area = (struct rseq *)(thread_pointer + __rseq_offset);
    __asm__ volatile(
        "1: leaq mitosis_rseq_section(%%rip), %%rax\n"
        "   movq %%rax, %c[cs](%[area])\n"
        ".globl mitosis_rseq_start\nmitosis_rseq_start:\n"
        "   pause\n"
        "   jmp mitosis_rseq_start\n"
        ".globl mitosis_rseq_post_commit\nmitosis_rseq_post_commit:\n"
        "   jmp 1b\n"
        "   .long 0x53053053\n"  // RSEQ_SIG, glibc's signature on x86
        ".globl mitosis_rseq_abort\nmitosis_rseq_abort:\n"
        "   lock incq %[aborts]\n"
        "   jmp 1b\n"
        : [aborts] "+m"(rseq_aborts)
        : [area] "r"(area), [cs] "i"(__builtin_offsetof(struct rseq, rseq_cs))
        : "rax", "memory");
}

static void rseq_main_thread(void) {
    rseq_main = pthread_self();
    __atomic_store_n(&rseq_main_known, 1, __ATOMIC_SEQ_CST);
    rseq_spin();
}

static int rseq_check(char *problem, size_t size) {
    while (!__atomic_load_n(&rseq_main_known, __ATOMIC_SEQ_CST)) sched_yield();
    uint64_t before = rseq_aborts;
    pthread_kill(rseq_main, SIGUSR1);
    for (int waited = 0; waited < 2000; waited++) {
        if (rseq_aborts != before) return 0;
        struct timespec t = { 0, 1000000L };
        nanosleep(&t, NULL);
    }
    snprintf(problem, size, "not-aborted-by-a-signal");
    return -1;
}

static scenario scenario_rseq = { "rseq", rseq_setup, 0, 0, rseq_main_thread, rseq_check };
__attribute__((constructor)) static void register_rseq(void) { scenario_register(&scenario_rseq); }
