#define _GNU_SOURCE
#include "mitosis_restore.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <linux/userfaultfd.h>

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

long mitosis_pipe_peek(const char *path, void *buffer, unsigned long capacity, int *pipe_size) {
    int source = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (source < 0) return -1;
    int size = fcntl(source, F_GETPIPE_SZ);
    int copy[2];
    if (size < 0 || pipe2(copy, O_CLOEXEC | O_NONBLOCK) != 0) {
        int saved = errno;
        close(source);
        errno = saved;
        return -1;
    }
    long result = 0;
    if (fcntl(copy[1], F_SETPIPE_SZ, size) < 0) {
        result = -1;
    } else {
        ssize_t count = tee(source, copy[1], capacity, SPLICE_F_NONBLOCK);
        if (count < 0 && errno == EAGAIN) count = 0;  // nothing unread
        if (count < 0) result = -1;
        while (result >= 0 && result < count) {
            ssize_t got = read(copy[0], (char *)buffer + result, (size_t)(count - result));
            if (got <= 0) { result = -1; break; }
            result += got;
        }
    }
    int saved = errno;
    close(copy[0]);
    close(copy[1]);
    close(source);
    errno = saved;
    *pipe_size = size;
    return result;
}

int mitosis_uffdio_copy_all(int fd, uint64_t address, const void *source, uint64_t length) {
    uint64_t done = 0;
    while (done < length) {
        struct uffdio_copy copy = { .dst = address + done, .src = (uint64_t)(uintptr_t)source + done, .len = length - done, .mode = 0 };
        if (ioctl(fd, UFFDIO_COPY, &copy) != 0 && copy.copy <= 0) {
            if (errno == EAGAIN) continue;
            return -1;
        }
        done += copy.copy > 0 ? (uint64_t)copy.copy : length - done;
    }
    return 0;
}

int mitosis_uffdio_register_missing(int fd, uint64_t start, uint64_t length) {
    struct uffdio_register reg = { .range = { .start = start, .len = length }, .mode = UFFDIO_REGISTER_MODE_MISSING };
    return ioctl(fd, UFFDIO_REGISTER, &reg);
}
