// Unix socket messages with their ancillary data (SCM_RIGHTS, SCM_CREDENTIALS): the control
// buffer of recvmsg/sendmsg is built and walked with the CMSG_* macros, which Swift cannot call.
#ifndef MITOSIS_UNIX_H
#define MITOSIS_UNIX_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// The most descriptors one message carries (the kernel's SCM_MAX_FD).
#define MITOSIS_SCM_MAX_FD 253

/// What came with one peeked message.
typedef struct mitosis_unix_ancillary {
    /// Descriptors installed in this process by the peek (close-on-exec), `rights_count` of them.
    int rights[MITOSIS_SCM_MAX_FD];
    int rights_count;
    /// Whether an SCM_CREDENTIALS message came (it does for every queued message while the
    /// socket has SO_PASSCRED), and its values as this process sees them.
    int has_credentials;
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
    /// recvmsg's msg_flags (MSG_TRUNC, MSG_CTRUNC).
    int flags;
} mitosis_unix_ancillary;

/// recvmsg(fd, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC | trunc) into `buffer`, with a control
/// buffer for rights and credentials. Returns the byte count (the whole datagram's with
/// MSG_TRUNC in `extra_flags`) or -errno.
ssize_t mitosis_unix_peek(int fd, void *buffer, size_t size, int extra_flags, mitosis_unix_ancillary *out);

/// sendmsg(fd, bytes, MSG_DONTWAIT | MSG_NOSIGNAL) with `rights_count` descriptors (SCM_RIGHTS)
/// and, when `with_credentials`, SCM_CREDENTIALS {pid, uid, gid}. Returns the bytes sent or -errno.
ssize_t mitosis_unix_send(int fd, const void *bytes, size_t length, const int *rights, int rights_count,
                          int with_credentials, int32_t pid, uint32_t uid, uint32_t gid);
#endif
