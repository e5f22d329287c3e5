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
    // Every disposition back to SIG_DFL with no flags, mask or restorer (the kernel's
    // k_sigaction: handler, flags, restorer, mask): the restore then sets only the signals the
    // image's differ for, instead of injecting 64 calls.
    uint64_t none[4] = { 0, 0, 0, 0 };
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, none, NULL, sizeof(uint64_t));
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

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#ifndef CLONE_NEWPID
#define CLONE_NEWPID 0x20000000
#endif

static int read_full(int fd, void *buffer, size_t size) {
    size_t done = 0;
    while (done < size) {
        ssize_t n = read(fd, (char *)buffer + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

/// pid 1 of the new namespace: creates the husk with the asked pid as its child, reports it,
/// then waits for its creator to let go (the control pipe reaches EOF: the restore ended, or
/// Mitosis died), reaps every child until none is left, and exits — which ends the namespace.
__attribute__((noreturn)) static void pidns_init_main(int request, int answer) {
    sigset_t all;
    sigfillset(&all);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, sizeof(uint64_t));
    // Every descriptor inherited from Mitosis goes, but the two pipes (a pipe end kept open
    // here would hide an EOF from whoever waits on it).
    int low = request < answer ? request : answer, high = request < answer ? answer : request;
    if (low > 0) syscall(SYS_close_range, 0, low - 1, 0);
    if (high > low + 1) syscall(SYS_close_range, low + 1, high - 1, 0);
    syscall(SYS_close_range, high + 1, ~0U, 0);
    syscall(SYS_prctl, PR_SET_NAME, "mitosis-pidns", 0, 0, 0);
    pid_t wanted;
    long result;
    if (read_full(request, &wanted, sizeof wanted) != 0) syscall(SYS_exit_group, 1);
    pid_t set_tid[1] = { wanted };
    mitosis_clone_args args = { 0 };
    args.exit_signal = SIGCHLD;
    args.set_tid = (uint64_t)(uintptr_t)set_tid;
    args.set_tid_size = 1;
    result = syscall(MITOSIS_SYS_clone3, &args, sizeof args);
    if (result == 0) husk_main(1);
    if (result < 0) result = -errno;
    if (write(answer, &result, sizeof result) != sizeof result) syscall(SYS_exit_group, 1);
    syscall(SYS_close, answer);
    char byte;
    for (;;) {
        ssize_t n = read(request, &byte, 1);
        if (n < 0 && errno == EINTR) continue;
        break;
    }
    int status;
    while (syscall(SYS_wait4, -1, &status, __WALL, NULL) > 0 || errno == EINTR) {}
    syscall(SYS_exit_group, 0);
    __builtin_unreachable();
}

pid_t mitosis_husk_spawn_pidns(pid_t pid, pid_t *init_pid, int *control) {
    int request[2], answer[2];
    if (pipe2(request, O_CLOEXEC) != 0) return -1;
    if (pipe2(answer, O_CLOEXEC) != 0) { close(request[0]); close(request[1]); return -1; }
    int own = open("/proc/thread-self/ns/pid_for_children", O_RDONLY | O_CLOEXEC);
    long init = -1;
    int saved = 0;
    if (own < 0 || unshare(CLONE_NEWPID) != 0) {
        saved = errno;
    } else {
        mitosis_clone_args args = { 0 };
        args.exit_signal = SIGCHLD;
        init = syscall(MITOSIS_SYS_clone3, &args, sizeof args);
        if (init == 0) {
            close(request[1]);
            close(answer[0]);
            pidns_init_main(request[0], answer[1]);
        }
        if (init < 0) saved = errno;
        // Back to this process's own namespace for its later children.
        if (setns(own, CLONE_NEWPID) != 0 && saved == 0) saved = errno;
    }
    if (own >= 0) close(own);
    close(request[0]);
    close(answer[1]);
    long husk = -1;
    if (init > 0 && saved == 0) {
        long result = 0;
        if (write(request[1], &pid, sizeof pid) != sizeof pid || read_full(answer[0], &result, sizeof result) != 0) {
            saved = EIO;
        } else if (result < 0) {
            saved = (int)-result;
        } else {
            // The husk's pid as this process sees it: init's only child.
            char path[64], text[64] = { 0 };
            snprintf(path, sizeof path, "/proc/%ld/task/%ld/children", init, init);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                if (read(fd, text, sizeof text - 1) > 0) husk = strtol(text, NULL, 10);
                close(fd);
            }
            if (husk <= 0) saved = ESRCH;
        }
    }
    close(answer[0]);
    if (saved != 0) {
        close(request[1]);  // init reaps what it made and exits
        if (init > 0) {
            int status;
            waitpid((pid_t)init, &status, __WALL);
        }
        errno = saved;
        return -1;
    }
    *init_pid = (pid_t)init;
    *control = request[1];
    return (pid_t)husk;
}
