// `unixinflight LOG`: a self-checking process whose unix sockets hold queued messages carrying
// descriptors in flight (SCM_RIGHTS) and credentials (SCM_CREDENTIALS), for restore tests.
//
// 20/21 a datagram socketpair; 21 (SO_PASSCRED) holds, sent from 20:
//   m0 a zero-length datagram sent before 21 had SO_PASSCRED (no credentials: pid 0, uid and gid
//      the overflow ids 65534);
//   m1 "file" carrying LOG.data ("0123456789", opened read-write, at offset 3), closed here since;
//   m2 "pipe" carrying the write end of a pipe whose read end is fd 24 ("pipebytes" unread);
//   m3 "dup" carrying fd 25 itself (an eventfd, counter 7): the same open file description;
//   m4 "creds" with credentials given explicitly: this pid, uid 4242, gid 4243;
//   m5 "pair" carrying one end of a stream socketpair whose other end is fd 26; the end in
//      flight holds "to-b1", sent from 26.
// 22/23 a stream socketpair; 23 (SO_PASSCRED) holds, sent from 22: "abc", then "def" carrying fd
//   25, then "ghi": a read stops after the message with the descriptor ("abcdef").
// Facts: the fd numbers above, and `inode` (LOG.data's).
// The check walks both queues with MSG_PEEK (SO_PEEK_OFF), so it can run again and again: every
// message's bytes, descriptors (kind, inode, offset, flags; kcmp for the shared one) and
// credentials, the ends' SO_PASSCRED, and that nothing else is queued. It puts SO_PEEK_OFF back
// off and closes what the peeks installed.
#define _GNU_SOURCE
#include "scenario.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/kcmp.h>

static char data_path[4096];

static int send_with(int fd, const void *bytes, size_t length, int right, const struct ucred *creds) {
    union {
        char bytes[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = length };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    size_t used = 0;
    if (right >= 0 || creds) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = sizeof control.bytes;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        if (right >= 0) {
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &right, sizeof(int));
            used += CMSG_SPACE(sizeof(int));
            c = (struct cmsghdr *)(control.bytes + used);
        }
        if (creds) {
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_CREDENTIALS;
            c->cmsg_len = CMSG_LEN(sizeof *creds);
            memcpy(CMSG_DATA(c), creds, sizeof *creds);
            used += CMSG_SPACE(sizeof *creds);
        }
        msg.msg_controllen = used;
    }
    return sendmsg(fd, &msg, 0) == (ssize_t)length ? 0 : -1;
}

static int place(int fd, int wanted) {
    if (fd == wanted) return 0;
    if (dup2(fd, wanted) != wanted) return -1;
    close(fd);
    return 0;
}

static int inflight_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    snprintf(data_path, sizeof data_path, "%s.data", argv[0]);
    int one = 1;
    int dgram[2], stream[2], pair[2], pipefd[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dgram) || place(dgram[0], 20) || place(dgram[1], 21)) return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, stream) || place(stream[0], 22) || place(stream[1], 23)) return -1;
    if (pipe(pipefd) || place(pipefd[0], 24)) return -1;
    int event = eventfd(7, 0);
    if (event < 0 || place(event, 25)) return -1;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) || place(pair[0], 26)) return -1;
    int file = open(data_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (file < 0 || write(file, "0123456789", 10) != 10 || lseek(file, 3, SEEK_SET) != 3) return -1;
    struct stat status;
    if (fstat(file, &status)) return -1;

    // m0 before SO_PASSCRED: neither end asks, so the kernel attaches no credentials.
    if (send(20, "", 0, 0) != 0) return -1;
    if (setsockopt(21, SOL_SOCKET, SO_PASSCRED, &one, sizeof one)) return -1;
    if (setsockopt(23, SOL_SOCKET, SO_PASSCRED, &one, sizeof one)) return -1;
    if (send_with(20, "file", 4, file, NULL)) return -1;
    close(file);
    if (write(pipefd[1], "pipebytes", 9) != 9 || send_with(20, "pipe", 4, pipefd[1], NULL)) return -1;
    close(pipefd[1]);
    if (send_with(20, "dup", 3, 25, NULL)) return -1;
    struct ucred creds = { .pid = getpid(), .uid = 4242, .gid = 4243 };
    if (send_with(20, "creds", 5, -1, &creds)) return -1;
    if (write(26, "to-b1", 5) != 5 || send_with(20, "pair", 4, pair[1], NULL)) return -1;
    close(pair[1]);

    if (send_with(22, "abc", 3, -1, NULL) || send_with(22, "def", 3, 25, NULL) || send_with(22, "ghi", 3, -1, NULL)) return -1;
    scenario_report("inode", "%lu", (unsigned long)status.st_ino);
    scenario_report("dgram", "20,21");
    scenario_report("stream", "22,23");
    return 0;
}

/// One peek at the socket's peek offset: bytes, at most one descriptor, credentials.
typedef struct peeked {
    ssize_t length;
    char bytes[64];
    int right;  // -1: none
    int rights;
    int has_creds;
    struct ucred creds;
} peeked;

static void peek(int fd, size_t size, peeked *out) {
    union {
        char bytes[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(struct ucred))];
        struct cmsghdr align;
    } control;
    memset(out, 0, sizeof *out);
    out->right = -1;
    struct iovec iov = { .iov_base = out->bytes, .iov_len = size < sizeof out->bytes ? size : sizeof out->bytes - 1 };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
    out->length = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (out->length < 0) out->length = -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_type == SCM_RIGHTS) {
            int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *fds = (int *)CMSG_DATA(c);
            for (int i = 0; i < n; i++) {
                if (out->right < 0) out->right = fds[i]; else close(fds[i]);
                out->rights++;
            }
        } else if (c->cmsg_type == SCM_CREDENTIALS) {
            out->has_creds = 1;
            memcpy(&out->creds, CMSG_DATA(c), sizeof out->creds);
        }
    }
}

static int peek_at(int fd, int offset, size_t size, peeked *out) {
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &offset, sizeof offset)) return -1;
    peek(fd, size, out);
    return 0;
}

#define FAIL(...) do { snprintf(problem, size, __VA_ARGS__); goto out; } while (0)

static int creds_are(const peeked *p, pid_t pid, uid_t uid, gid_t gid) {
    return p->has_creds && p->creds.pid == pid && p->creds.uid == uid && p->creds.gid == gid;
}

static int inflight_check(char *problem, size_t size) {
    peeked p = { .right = -1 };
    int result = -1, off = -1;
    pid_t self = getpid();
    int flag = 0;
    socklen_t length = sizeof flag;
    for (int fd = 20; fd <= 23; fd++) {
        if (getsockopt(fd, SOL_SOCKET, SO_PASSCRED, &flag, &length)) FAIL("getsockopt-%d", fd);
        if (flag != (fd == 21 || fd == 23)) FAIL("SO_PASSCRED-of-%d-is-%d", fd, flag);
    }

    // The datagrams: the head with the peek offset off, the rest by offset.
    if (peek_at(21, -1, 64, &p)) FAIL("SO_PEEK_OFF");
    if (p.length != 0 || p.rights || !creds_are(&p, 0, 65534, 65534))
        FAIL("m0:length=%zd,rights=%d,creds=%d/%d/%d", p.length, p.rights, p.creds.pid, p.creds.uid, p.creds.gid);
    int offset = 0;
    const char *words[] = { "file", "pipe", "dup", "creds", "pair" };
    for (int i = 0; i < 5; i++) {
        if (p.right >= 0) close(p.right);
        if (peek_at(21, offset, 64, &p)) FAIL("SO_PEEK_OFF");
        if (p.length != (ssize_t)strlen(words[i]) || memcmp(p.bytes, words[i], p.length) != 0)
            FAIL("m%d:%zd:%.*s", i + 1, p.length, p.length > 0 ? (int)p.length : 0, p.bytes);
        offset += p.length;
        int expected_right = i != 3;
        if (p.rights != expected_right) FAIL("m%d:rights=%d", i + 1, p.rights);
        if (i == 3 ? !creds_are(&p, self, 4242, 4243) : !creds_are(&p, self, 0, 0))
            FAIL("m%d:creds=%d/%d/%d", i + 1, p.creds.pid, p.creds.uid, p.creds.gid);
        struct stat s, t;
        if (p.right >= 0 && fstat(p.right, &s)) FAIL("m%d:fstat", i + 1);
        if (i == 0) {
            if (stat(data_path, &t) || s.st_ino != t.st_ino || !S_ISREG(s.st_mode)) FAIL("m1:not-LOG.data");
            if (lseek(p.right, 0, SEEK_CUR) != 3) FAIL("m1:offset=%ld", (long)lseek(p.right, 0, SEEK_CUR));
            if ((fcntl(p.right, F_GETFL) & O_ACCMODE) != O_RDWR) FAIL("m1:flags");
            char bytes[11] = "";
            if (pread(p.right, bytes, 10, 0) != 10 || memcmp(bytes, "0123456789", 10)) FAIL("m1:content");
        } else if (i == 1) {
            int unread = -1;
            if (fstat(24, &t) || !S_ISFIFO(s.st_mode) || s.st_ino != t.st_ino) FAIL("m2:not-the-pipe-of-24");
            if ((fcntl(p.right, F_GETFL) & O_ACCMODE) != O_WRONLY) FAIL("m2:flags");
            if (ioctl(24, FIONREAD, &unread) || unread != 9) FAIL("m2:unread=%d", unread);
        } else if (i == 2) {
            if (syscall(SYS_kcmp, self, self, KCMP_FILE, p.right, 25) != 0) FAIL("m3:not-fd-25's-description");
        } else if (i == 4) {
            int type = 0, inq = -1;
            socklen_t l = sizeof type;
            char bytes[8] = "";
            if (getsockopt(p.right, SOL_SOCKET, SO_TYPE, &type, &l) || type != SOCK_STREAM) FAIL("m5:type=%d", type);
            if (ioctl(p.right, FIONREAD, &inq) || inq != 5) FAIL("m5:queued=%d", inq);
            if (recv(p.right, bytes, sizeof bytes, MSG_PEEK | MSG_DONTWAIT) != 5 || memcmp(bytes, "to-b1", 5)) FAIL("m5:bytes");
        }
    }
    if (p.right >= 0) close(p.right);
    p.right = -1;
    if (peek_at(21, offset, 64, &p)) FAIL("SO_PEEK_OFF");
    if (p.length != -EAGAIN) FAIL("dgram:more-than-6-messages:%zd", p.length);

    // The stream: a read stops after the message with the descriptor.
    if (peek_at(23, 0, 64, &p)) FAIL("SO_PEEK_OFF");
    if (p.length != 6 || memcmp(p.bytes, "abcdef", 6) || p.rights != 1) FAIL("stream-1:%zd,rights=%d", p.length, p.rights);
    if (syscall(SYS_kcmp, self, self, KCMP_FILE, p.right, 25) != 0) FAIL("stream:not-fd-25's-description");
    if (!creds_are(&p, self, 0, 0)) FAIL("stream-1:creds=%d/%d/%d", p.creds.pid, p.creds.uid, p.creds.gid);
    close(p.right);
    p.right = -1;
    if (peek_at(23, 6, 64, &p)) FAIL("SO_PEEK_OFF");
    if (p.length != 3 || memcmp(p.bytes, "ghi", 3) || p.rights) FAIL("stream-2:%zd,rights=%d", p.length, p.rights);
    if (peek_at(23, 9, 64, &p)) FAIL("SO_PEEK_OFF");
    if (p.length != -EAGAIN) FAIL("stream:more:%zd", p.length);
    long counter = 0;
    // The eventfd's counter, read and written back (7 before and after).
    if (read(25, &counter, 8) != 8 || counter != 7 || write(25, &counter, 8) != 8) FAIL("eventfd:%ld", counter);
    result = 0;
out:
    if (p.right >= 0) close(p.right);
    setsockopt(21, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
    setsockopt(23, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
    return result;
}

SCENARIO_CHECKED(unixinflight, inflight_setup, NULL, inflight_check)
