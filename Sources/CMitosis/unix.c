#define _GNU_SOURCE
#include "mitosis_unix.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

ssize_t mitosis_unix_peek(int fd, void *buffer, size_t size, int extra_flags, mitosis_unix_ancillary *out) {
    union {
        char bytes[CMSG_SPACE(sizeof(int) * MITOSIS_SCM_MAX_FD) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    memset(out, 0, sizeof *out);
    struct iovec iov = { .iov_base = buffer, .iov_len = size };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
    ssize_t count;
    do {
        count = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | extra_flags);
    } while (count < 0 && errno == EINTR);
    if (count < 0) return -errno;
    out->flags = msg.msg_flags;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_RIGHTS) {
            size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < n && out->rights_count < MITOSIS_SCM_MAX_FD; i++) {
                memcpy(&out->rights[out->rights_count++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        } else if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            struct ucred creds;
            memcpy(&creds, CMSG_DATA(c), sizeof creds);
            out->has_credentials = 1;
            out->pid = creds.pid;
            out->uid = creds.uid;
            out->gid = creds.gid;
        }
    }
    return count;
}

ssize_t mitosis_unix_send(int fd, const void *bytes, size_t length, const int *rights, int rights_count,
                          int with_credentials, int32_t pid, uint32_t uid, uint32_t gid) {
    union {
        char bytes[CMSG_SPACE(sizeof(int) * MITOSIS_SCM_MAX_FD) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    if (rights_count < 0 || rights_count > MITOSIS_SCM_MAX_FD) return -EINVAL;
    memset(&control, 0, sizeof control);
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    size_t used = 0;
    if (rights_count > 0 || with_credentials) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (rights_count > 0) {
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * rights_count);
            memcpy(CMSG_DATA(c), rights, sizeof(int) * rights_count);
            used += CMSG_SPACE(sizeof(int) * rights_count);
            c = (struct cmsghdr *)(control.bytes + used);
        }
        if (with_credentials) {
            struct ucred creds = { .pid = pid, .uid = uid, .gid = gid };
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_CREDENTIALS;
            c->cmsg_len = CMSG_LEN(sizeof creds);
            memcpy(CMSG_DATA(c), &creds, sizeof creds);
            used += CMSG_SPACE(sizeof creds);
        }
        msg.msg_controllen = used;
    }
    ssize_t sent;
    do {
        sent = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent < 0 ? -errno : sent;
}
