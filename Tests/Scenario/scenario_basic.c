// The smallest scenarios: an idle process, and one with N idle threads.
#include "scenario.h"
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>

static int idle_setup(int argc, char **argv) { (void)argc; (void)argv; return 0; }
SCENARIO(idle, idle_setup, NULL)

static void *sleeper(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

/// `threads N`: N extra threads blocked in pause(); reports their tids as `tids=a,b,…`.
static int threads_setup(int argc, char **argv) {
    int count = argc > 0 ? atoi(argv[0]) : 3;
    for (int i = 0; i < count; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, sleeper, NULL) != 0) return -1;
    }
    scenario_report("threads", "%d", count + 1);
    return 0;
}
SCENARIO(threads, threads_setup, NULL)

// undumpable — asked the kernel not to be dumped (prctl(PR_SET_DUMPABLE, 0)), holding a secret.
#include <sys/prctl.h>
static char secret[64] = "TOPSECRET-mitosis-undumpable";
static int undumpable_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    scenario_report("secret", "%s", secret);
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}
SCENARIO(undumpable, undumpable_setup, NULL)
