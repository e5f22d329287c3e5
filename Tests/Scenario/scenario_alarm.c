// `alarm MODE`: ITIMER_REAL every 20 ms, SIGALRM caught (SA_RESTART) and counted; a process of
// one thread. MODE `blocked`: SIGALRM stays blocked outside `check`, so between checks the
// timer has fired and waits with its signal pending — a periodic ITIMER_REAL is re-armed only
// when its SIGALRM is taken, and until then getitimer reports it as {20 ms, 0} (the state a
// checkpoint finds when the timer fires while the process is frozen). MODE `running`: SIGALRM
// is never blocked. Other commands report `fired` (signals handled so far).
//
// `check`: the timer still has its 20 ms period, and SIGALRM keeps coming: at least 5 in the
// next 200 ms (with SIGALRM unblocked meanwhile in `blocked` mode). A lost timer gets at most
// the one pending signal.
#define _GNU_SOURCE
#include "scenario.h"
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define PERIOD_US 20000

static _Atomic uint64_t fired;
static int blocked;

static void on_alarm(int sig) {
    (void)sig;
    fired++;
}

static void mask_alarm(int how) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    sigprocmask(how, &set, NULL);
}

static int alarm_check(char *problem, size_t size) {
    struct itimerval now;
    if (getitimer(ITIMER_REAL, &now) != 0 || now.it_interval.tv_sec != 0 || now.it_interval.tv_usec != PERIOD_US)
        return snprintf(problem, size, "ITIMER_REAL lost its period (interval %ld us)", (long)now.it_interval.tv_usec), -1;
    uint64_t before = fired;
    if (blocked) mask_alarm(SIG_UNBLOCK);
    // 200 ms on CLOCK_MONOTONIC, whatever the handler interrupts.
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_nsec += 200 * 1000 * 1000;
    if (end.tv_nsec >= 1000000000) { end.tv_sec++; end.tv_nsec -= 1000000000; }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &end, NULL) != 0) {}
    if (blocked) mask_alarm(SIG_BLOCK);
    uint64_t count = fired - before;
    if (count < 5) return snprintf(problem, size, "SIGALRM %llu times in 200 ms (every 20 ms expected)", (unsigned long long)count), -1;
    return 0;
}

static int alarm_step(const char *command) {
    (void)command;
    scenario_report("fired", "%llu", (unsigned long long)fired);
    return 0;
}

static int alarm_setup(int argc, char **argv) {
    if (argc < 1 || (strcmp(argv[0], "blocked") != 0 && strcmp(argv[0], "running") != 0)) return -1;
    blocked = strcmp(argv[0], "blocked") == 0;
    struct sigaction action = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGALRM, &action, NULL) != 0) return -1;
    if (blocked) mask_alarm(SIG_BLOCK);
    struct itimerval every = { { 0, PERIOD_US }, { 0, PERIOD_US } };
    return setitimer(ITIMER_REAL, &every, NULL);
}
SCENARIO_CHECKED(alarm, alarm_setup, alarm_step, alarm_check)
