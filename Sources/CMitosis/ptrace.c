#include "mitosis_ptrace.h"
#include <errno.h>
#include <stddef.h>

long mitosis_ptrace(int request, pid_t pid, void *addr, void *data) {
    return ptrace((enum __ptrace_request)request, pid, addr, data);
}

int mitosis_ptrace_peek(pid_t pid, uint64_t addr, uint64_t *out) {
    errno = 0;
    long word = ptrace(PTRACE_PEEKDATA, pid, (void *)addr, NULL);
    if (word == -1 && errno != 0) return -1;
    *out = (uint64_t)word;
    return 0;
}
