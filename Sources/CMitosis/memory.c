#define _GNU_SOURCE
#include "mitosis_memory.h"
#include <sys/ioctl.h>
#include <sys/uio.h>

int mitosis_uffdio_api(int fd, uint64_t features, uint64_t *offered_features, uint64_t *ioctls) {
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) != 0) return -1;
    *offered_features = api.features;
    *ioctls = api.ioctls;
    return 0;
}

int mitosis_uffdio_register(int fd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls) {
    struct uffdio_register reg = { .range = { .start = start, .len = length }, .mode = mode };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) != 0) return -1;
    *ioctls = reg.ioctls;
    return 0;
}

int mitosis_uffdio_unregister(int fd, uint64_t start, uint64_t length) {
    struct uffdio_range range = { .start = start, .len = length };
    return ioctl(fd, UFFDIO_UNREGISTER, &range);
}

int mitosis_uffdio_writeprotect(int fd, uint64_t start, uint64_t length, uint64_t mode) {
    struct uffdio_writeprotect wp = { .range = { .start = start, .len = length }, .mode = mode };
    return ioctl(fd, UFFDIO_WRITEPROTECT, &wp);
}

long mitosis_pagemap_scan(int fd, struct pm_scan_arg *arg) {
    return ioctl(fd, PAGEMAP_SCAN, arg);
}

ssize_t mitosis_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long local_count,
                                 const struct iovec *remote, unsigned long remote_count) {
    return process_vm_readv(pid, local, local_count, remote, remote_count, 0);
}
