// Per-thread kernel state that Debian 12's 6.1 headers or glibc 2.36 do not cover:
// PTRACE_GET_RSEQ_CONFIGURATION (Linux 5.13) and sched_getattr(2), which glibc does not wrap.
#ifndef MITOSIS_THREADS_H
#define MITOSIS_THREADS_H
#include <stdint.h>
#include <sys/types.h>

/// The kernel's `struct ptrace_rseq_configuration`.
typedef struct mitosis_rseq_configuration {
    uint64_t rseq_abi_pointer;
    uint32_t rseq_abi_size;
    uint32_t signature;
    uint32_t flags;
    uint32_t pad;
} mitosis_rseq_configuration;

static const int MITOSIS_PTRACE_GET_RSEQ_CONFIGURATION = 0x420f;

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER1, 56 bytes).
typedef struct mitosis_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime;
    uint64_t sched_deadline;
    uint64_t sched_period;
    uint32_t sched_util_min;
    uint32_t sched_util_max;
} mitosis_sched_attr;

/// sched_getattr(tid, attr, sizeof *attr, 0); returns 0 or -1 with errno.
int mitosis_sched_getattr(pid_t tid, mitosis_sched_attr *attr);

#endif
