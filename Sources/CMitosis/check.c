#define _GNU_SOURCE
#include "mitosis_check.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/in.h>

static const char probe_marker[] = "mitosis kernel probe marker";
static char probe_page[4096] __attribute__((aligned(4096)));

int mitosis_probe_child_spawn(mitosis_probe_child *child) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    memset(probe_page, 0x5a, sizeof probe_page);  // present in both processes after the fork
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        close(fds[0]);
        close(fds[1]);
        errno = saved;
        return -1;
    }
    if (pid == 0) {
        // Only async-signal-safe calls here: the parent is multithreaded.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0);
        // Hold nothing of the parent's but the probe pipe.
        if (fds[0] > 0) syscall(SYS_close_range, 0, fds[0] - 1, 0);
        syscall(SYS_close_range, fds[0] + 1, ~0U, 0);
        for (;;) pause();
    }
    close(fds[1]);
    child->pid = pid;
    child->shared_fd = fds[0];
    child->marker_address = (uint64_t)(uintptr_t)probe_marker;
    child->marker_length = sizeof probe_marker - 1;
    child->page_address = (uint64_t)(uintptr_t)probe_page;
    return 0;
}

void mitosis_probe_child_end(const mitosis_probe_child *child) {
    kill(child->pid, SIGKILL);
    while (waitpid(child->pid, NULL, 0) == -1 && errno == EINTR) {}
    close(child->shared_fd);
}

int mitosis_probe_sock_diag(int family, int protocol) {
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return -errno;
    struct {
        struct nlmsghdr header;
        union {
            struct inet_diag_req_v2 inet;
            struct unix_diag_req unix_request;
        };
    } request;
    memset(&request, 0, sizeof request);
    request.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    if (family == AF_UNIX) {
        request.header.nlmsg_len = NLMSG_LENGTH(sizeof request.unix_request);
        request.unix_request.sdiag_family = AF_UNIX;
        request.unix_request.udiag_states = ~0U;
    } else {
        request.header.nlmsg_len = NLMSG_LENGTH(sizeof request.inet);
        request.inet.sdiag_family = (uint8_t)family;
        request.inet.sdiag_protocol = (uint8_t)protocol;
        request.inet.idiag_states = ~0U;
    }
    int result = 0;
    if (send(fd, &request, request.header.nlmsg_len, 0) < 0) { result = -errno; goto done; }
    for (;;) {
        static __thread char buffer[32768];
        ssize_t length = recv(fd, buffer, sizeof buffer, 0);
        if (length < 0) {
            if (errno == EINTR) continue;
            result = -errno;
            goto done;
        }
        if (length == 0) { result = -EPROTO; goto done; }
        for (struct nlmsghdr *message = (struct nlmsghdr *)buffer; NLMSG_OK(message, (size_t)length);
             message = NLMSG_NEXT(message, length)) {
            if (message->nlmsg_type == NLMSG_DONE) goto done;
            if (message->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *error = NLMSG_DATA(message);
                result = error->error < 0 ? error->error : -EPROTO;
                goto done;
            }
            result++;
        }
    }
done:
    close(fd);
    return result;
}
