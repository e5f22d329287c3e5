// Page tracking ABI: userfaultfd write-protect and PAGEMAP_SCAN, defined here when Debian 12's
// 6.1 headers lack them (guarded, so newer headers win).
#ifndef MITOSIS_MEMORY_H
#define MITOSIS_MEMORY_H
#include <stdint.h>
#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/userfaultfd.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <malloc.h>  // mallopt: Kernel.keepFreedMemoryForReuse

// --- PAGEMAP_SCAN (Linux 6.7+, <linux/fs.h>) ---
#ifndef PAGEMAP_SCAN
struct page_region {
    __u64 start;
    __u64 end;
    __u64 categories;
};
struct pm_scan_arg {
    __u64 size;
    __u64 flags;
    __u64 start;
    __u64 end;
    __u64 walk_end;
    __u64 vec;
    __u64 vec_len;
    __u64 max_pages;
    __u64 category_inverted;
    __u64 category_mask;
    __u64 category_anyof_mask;
    __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
#endif

// --- userfaultfd features newer than 6.1 ---
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

// Values Swift can import (it cannot expand _IOWR or casts).
static const uint64_t MITOSIS_PM_SCAN_WP_MATCHING = PM_SCAN_WP_MATCHING;
static const uint64_t MITOSIS_PM_SCAN_CHECK_WPASYNC = PM_SCAN_CHECK_WPASYNC;
static const uint64_t MITOSIS_UFFD_API = UFFD_API;
static const uint64_t MITOSIS_UFFD_FEATURE_WP_UNPOPULATED = UFFD_FEATURE_WP_UNPOPULATED;
static const uint64_t MITOSIS_UFFD_FEATURE_WP_ASYNC = UFFD_FEATURE_WP_ASYNC;
static const uint64_t MITOSIS_UFFDIO_REGISTER_MODE_WP = UFFDIO_REGISTER_MODE_WP;
static const uint64_t MITOSIS_UFFDIO_WRITEPROTECT_MODE_WP = UFFDIO_WRITEPROTECT_MODE_WP;
static const int MITOSIS_UFFD_USER_MODE_ONLY = UFFD_USER_MODE_ONLY;

/// UFFDIO_API: enables `features`; on success stores what the kernel offers in the out values.
int mitosis_uffdio_api(int fd, uint64_t features, uint64_t *offered_features, uint64_t *ioctls);
/// UFFDIO_REGISTER of [start, start+length) with `mode`; stores the range ioctls allowed.
int mitosis_uffdio_register(int fd, uint64_t start, uint64_t length, uint64_t mode, uint64_t *ioctls);
/// UFFDIO_UNREGISTER of [start, start+length).
int mitosis_uffdio_unregister(int fd, uint64_t start, uint64_t length);
/// UFFDIO_WRITEPROTECT of [start, start+length); `mode` is UFFDIO_WRITEPROTECT_MODE_WP or 0.
int mitosis_uffdio_writeprotect(int fd, uint64_t start, uint64_t length, uint64_t mode);
/// process_vm_readv with many ranges at once (up to IOV_MAX each side); returns bytes read or -1.
ssize_t mitosis_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long local_count,
                                 const struct iovec *remote, unsigned long remote_count);
/// PAGEMAP_SCAN on an open /proc/PID/pagemap; returns the number of regions filled or -1.
long mitosis_pagemap_scan(int fd, struct pm_scan_arg *arg);

#endif
