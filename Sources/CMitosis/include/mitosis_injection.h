// System call numbers for remote syscall injection: <sys/syscall.h> defines them as macros that
// Swift does not import, so they are re-exported here as constants of this architecture.
#ifndef MITOSIS_INJECTION_H
#define MITOSIS_INJECTION_H
#include <sys/syscall.h>

static const long MITOSIS_SYS_read = SYS_read;
static const long MITOSIS_SYS_write = SYS_write;
static const long MITOSIS_SYS_close = SYS_close;
static const long MITOSIS_SYS_mmap = SYS_mmap;
static const long MITOSIS_SYS_munmap = SYS_munmap;
static const long MITOSIS_SYS_getpid = SYS_getpid;
static const long MITOSIS_SYS_gettid = SYS_gettid;
static const long MITOSIS_SYS_fcntl = SYS_fcntl;
static const long MITOSIS_SYS_userfaultfd = SYS_userfaultfd;

#endif
