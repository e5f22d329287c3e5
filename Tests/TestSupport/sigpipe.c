// The test process must outlive a write to a pipe or socket whose reader is gone: a test's
// child or server that died (or was killed on a timeout in a stalled run) would otherwise end
// the whole run with SIGPIPE, every other test's result lost — this happened in two CI runs of
// this VM after it stalled for a minute. A handler that only counts makes such writes fail with
// EPIPE instead. A handler, not SIG_IGN: exec resets it to the default, so the programs the
// tests start (scenarios, redis, nginx, mitosis) get SIGPIPE as they would anywhere else.
#include "mitosis_test_support.h"
#include <signal.h>
#include <string.h>

static volatile long sigpipes;

static void count_sigpipe(int signal) {
    (void)signal;
    __atomic_add_fetch(&sigpipes, 1, __ATOMIC_SEQ_CST);
}

__attribute__((constructor)) static void catch_sigpipe(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = count_sigpipe;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGPIPE, &action, NULL);
}

long mitosis_test_support_sigpipes(void) { return __atomic_load_n(&sigpipes, __ATOMIC_SEQ_CST); }
