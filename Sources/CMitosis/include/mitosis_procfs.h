// What reading /proc needs beyond what SwiftGlibc exports: statfs(2) is not in its module, and
// semctl(2) is variadic.
#ifndef MITOSIS_PROCFS_H
#define MITOSIS_PROCFS_H
#include <sys/vfs.h>
#include <sys/sem.h>

/// statfs(2) of `path`, returning only the filesystem magic in `*type`; 0 or -1 with errno.
static inline int mitosis_statfs_type(const char *path, long *type) {
    struct statfs info;
    int result = statfs(path, &info);
    if (result == 0) *type = (long)info.f_type;
    return result;
}

/// semctl(semid, semnum, GETPID): the pid of the last semop on one semaphore; -1 with errno.
static inline int mitosis_semctl_getpid(int semid, int semnum) { return semctl(semid, semnum, GETPID); }

#endif
