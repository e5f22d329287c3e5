#define _GNU_SOURCE
#include "mitosis_check.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static const char probe_marker[] = "mitosis kernel probe marker";
static char probe_page[4096] __attribute__((aligned(4096)));

int mitosis_probe_child_spawn(mitosis_probe_child *child) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    memset(probe_page, 0x5a, sizeof probe_page);  // present in both processes after the fork
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    if (pid == 0) {
        // Only async-signal-safe calls here: the parent is multithreaded. Hold nothing of the
        // parent's but the pipe's read end; only the prober holds its write end.
        if (fds[0] > 0) syscall(SYS_close_range, 0, fds[0] - 1, 0);
        syscall(SYS_close_range, fds[0] + 1, ~0U, 0);
        // The read ends when the write end closes: at end(), or when the prober dies, whatever
        // thread forked this child (PR_SET_PDEATHSIG would fire when that one thread exits, and
        // a thread pool retires its idle threads).
        char byte;
        ssize_t n;
        do n = read(fds[0], &byte, 1);
        while (n > 0 || (n < 0 && errno == EINTR));
        _exit(0);
    }
    child->pid = pid;
    child->shared_fd = fds[0];
    child->lifeline_fd = fds[1];
    child->marker_address = (uint64_t)(uintptr_t)probe_marker;
    child->marker_length = sizeof probe_marker - 1;
    child->page_address = (uint64_t)(uintptr_t)probe_page;
    return 0;
}

void mitosis_probe_child_end(const mitosis_probe_child *child) {
    kill(child->pid, SIGKILL);
    while (waitpid(child->pid, NULL, 0) == -1 && errno == EINTR) {}
    close(child->shared_fd);
    close(child->lifeline_fd);
}
