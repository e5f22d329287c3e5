// Process-level system calls that Debian 12's glibc does not wrap (pidfd_*, kcmp) or that
// need _GNU_SOURCE, which must not be defined in a header Swift imports.
#ifndef MITOSIS_PROCESS_H
#define MITOSIS_PROCESS_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

/// process_vm_readv of one contiguous remote range into `local`; returns bytes read or -1.
ssize_t mitosis_process_vm_read(pid_t pid, void *local, size_t length, uint64_t remote);
/// process_vm_writev of one contiguous range; returns bytes written or -1.
ssize_t mitosis_process_vm_write(pid_t pid, const void *local, size_t length, uint64_t remote);
int mitosis_pidfd_open(pid_t pid, unsigned int flags);
int mitosis_pidfd_getfd(int pidfd, int targetfd, unsigned int flags);
int mitosis_pidfd_send_signal(int pidfd, int sig);
/// kcmp(2): 0 equal, 1/2 ordered unequal, 3 unordered unequal, -1 error.
int mitosis_kcmp(pid_t pid1, pid_t pid2, int type, unsigned long idx1, unsigned long idx2);
/// setns(2) into the namespace behind `fd` (nstype 0 = any).
int mitosis_setns(int fd, int nstype);
int mitosis_gettid(void);
/// pipe2(fds, O_CLOEXEC): pipe2 needs _GNU_SOURCE.
int mitosis_pipe_cloexec(int fds[2]);
/// posix_spawn_file_actions_addclosefrom_np(actions, from) (glibc 2.34+, needs _GNU_SOURCE):
/// the child closes every descriptor from `from` up. `actions` is a posix_spawn_file_actions_t.
int mitosis_spawn_close_from(void *actions, int from);
/// A raw syscall(2) with up to six arguments, for the few calls with no libc wrapper.
long mitosis_syscall6(long number, long a1, long a2, long a3, long a4, long a5, long a6);

static const int MITOSIS_KCMP_FILE = 0;
static const int MITOSIS_KCMP_VM = 1;
static const int MITOSIS_KCMP_FILES = 2;
static const int MITOSIS_KCMP_FS = 3;
static const int MITOSIS_KCMP_SIGHAND = 4;
static const int MITOSIS_KCMP_IO = 5;
static const int MITOSIS_KCMP_SYSVSEM = 6;

#endif
