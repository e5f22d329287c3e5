#define _GNU_SOURCE
#include "mitosis_restore.h"
#include <signal.h>
#include <unistd.h>
#include <sys/prctl.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

__attribute__((noreturn)) static void husk_main(pid_t parent) {
    sigset_t all;
    sigfillset(&all);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, sizeof(uint64_t));
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    // The parent may have died before PDEATHSIG was armed.
    if (syscall(SYS_getppid) != parent) syscall(SYS_exit_group, 1);
    syscall(SYS_close_range, 0, ~0U, 0);
    for (;;) syscall(SYS_pause);
}

pid_t mitosis_husk_spawn(pid_t pid) {
    pid_t parent = getpid();
    pid_t set_tid[1] = { pid };
    mitosis_clone_args args = { 0 };
    args.exit_signal = SIGCHLD;
    args.set_tid = (uint64_t)(uintptr_t)set_tid;
    args.set_tid_size = 1;
    long result = syscall(MITOSIS_SYS_clone3, &args, sizeof args);
    if (result == 0) husk_main(parent);
    return (pid_t)result;
}

int mitosis_get_robust_list(pid_t tid, uint64_t *head, uint64_t *length) {
    void *h = NULL;
    size_t l = 0;
    if (syscall(SYS_get_robust_list, tid, &h, &l) != 0) return -1;
    *head = (uint64_t)(uintptr_t)h;
    *length = (uint64_t)l;
    return 0;
}
