// `fifo LOG`: a self-checking process holding FIFOs (named pipes), for restore tests.
//
// 20 LOG.fifo opened for reading, non-blocking; 21 the same FIFO opened for writing (blocking),
//    "fifobytes" written and unread; 22 LOG.fifo2 opened read-write, holding "rw".
// The check verifies each descriptor's FIFO (inode of its path), access mode and O_NONBLOCK, and
// the unread bytes by tee(2) into a pipe of its own (so they stay unread).
#define _GNU_SOURCE
#include "scenario.h"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char paths[2][4096];

static int place(int fd, int wanted) {
    if (fd == wanted) return 0;
    if (dup2(fd, wanted) != wanted) return -1;
    close(fd);
    return 0;
}

static int fifo_setup(int argc, char **argv) {
    if (argc < 1) return -1;
    snprintf(paths[0], sizeof paths[0], "%s.fifo", argv[0]);
    snprintf(paths[1], sizeof paths[1], "%s.fifo2", argv[0]);
    for (int i = 0; i < 2; i++) { unlink(paths[i]); if (mkfifo(paths[i], 0600)) return -1; }
    int reader = open(paths[0], O_RDONLY | O_NONBLOCK);
    if (reader < 0 || place(reader, 20)) return -1;
    int writer = open(paths[0], O_WRONLY);
    if (writer < 0 || place(writer, 21) || write(21, "fifobytes", 9) != 9) return -1;
    int both = open(paths[1], O_RDWR);
    if (both < 0 || place(both, 22) || write(22, "rw", 2) != 2) return -1;
    return 0;
}

/// The bytes unread in the FIFO of `fd`, copied with tee(2).
static ssize_t unread(int fd, char *out, size_t size) {
    int copy[2];
    if (pipe2(copy, O_NONBLOCK | O_CLOEXEC)) return -1;
    ssize_t count = tee(fd, copy[1], size, SPLICE_F_NONBLOCK);
    if (count > 0) count = read(copy[0], out, count);
    close(copy[0]);
    close(copy[1]);
    return count;
}

#define FAIL(...) do { snprintf(problem, size, __VA_ARGS__); return -1; } while (0)

static int fifo_check(char *problem, size_t size) {
    struct { int fd, path, mode, nonblock; const char *bytes; } ends[] = {
        { 20, 0, O_RDONLY, 1, "fifobytes" }, { 21, 0, O_WRONLY, 0, NULL }, { 22, 1, O_RDWR, 0, "rw" },
    };
    for (int i = 0; i < 3; i++) {
        struct stat own, named;
        if (fstat(ends[i].fd, &own) || stat(paths[ends[i].path], &named) || !S_ISFIFO(own.st_mode) || own.st_ino != named.st_ino)
            FAIL("%d-not-the-FIFO", ends[i].fd);
        int flags = fcntl(ends[i].fd, F_GETFL);
        if ((flags & O_ACCMODE) != ends[i].mode) FAIL("%d-mode=%d", ends[i].fd, flags & O_ACCMODE);
        if (!!(flags & O_NONBLOCK) != ends[i].nonblock) FAIL("%d-O_NONBLOCK=%d", ends[i].fd, !!(flags & O_NONBLOCK));
        if (ends[i].bytes) {
            char bytes[64] = "";
            ssize_t n = unread(ends[i].fd, bytes, sizeof bytes - 1);
            if (n != (ssize_t)strlen(ends[i].bytes) || memcmp(bytes, ends[i].bytes, n)) FAIL("%d-unread=%zd:%s", ends[i].fd, n, bytes);
        }
    }
    return 0;
}

SCENARIO_CHECKED(fifo, fifo_setup, NULL, fifo_check)
