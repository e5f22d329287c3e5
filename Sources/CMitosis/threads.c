#define _GNU_SOURCE
#include "mitosis_threads.h"
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_sched_getattr
#define SYS_sched_getattr 315
#endif

int mitosis_sched_getattr(pid_t tid, mitosis_sched_attr *attr) {
    return (int)syscall(SYS_sched_getattr, tid, attr, (unsigned int)sizeof *attr, 0U);
}
