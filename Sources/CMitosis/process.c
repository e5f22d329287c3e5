#define _GNU_SOURCE
#include "mitosis_process.h"
#include <sched.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <fcntl.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

ssize_t mitosis_process_vm_read(pid_t pid, void *local, size_t length, uint64_t remote) {
    struct iovec l = { local, length };
    struct iovec r = { (void *)remote, length };
    return process_vm_readv(pid, &l, 1, &r, 1, 0);
}

ssize_t mitosis_process_vm_write(pid_t pid, const void *local, size_t length, uint64_t remote) {
    struct iovec l = { (void *)local, length };
    struct iovec r = { (void *)remote, length };
    return process_vm_writev(pid, &l, 1, &r, 1, 0);
}

int mitosis_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
int mitosis_pidfd_getfd(int pidfd, int targetfd, unsigned int flags) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, flags);
}
int mitosis_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}
int mitosis_kcmp(pid_t pid1, pid_t pid2, int type, unsigned long idx1, unsigned long idx2) {
    return (int)syscall(SYS_kcmp, pid1, pid2, type, idx1, idx2);
}
int mitosis_setns(int fd, int nstype) { return setns(fd, nstype); }
int mitosis_gettid(void) { return (int)syscall(SYS_gettid); }
long mitosis_syscall6(long number, long a1, long a2, long a3, long a4, long a5, long a6) {
    return syscall(number, a1, a2, a3, a4, a5, a6);
}
int mitosis_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int mitosis_spawn_close_from(void *actions, int from) { return posix_spawn_file_actions_addclosefrom_np(actions, from); }
