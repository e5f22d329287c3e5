// Kernel feature probes (`mitosis check`): a short-lived child to try features on.
#ifndef MITOSIS_CHECK_H
#define MITOSIS_CHECK_H
#include <stdint.h>
#include <sys/types.h>

/// A forked child that only waits, until the prober's end of its lifeline closes (end(), or the
/// prober's death). It shares with the prober: one
/// pipe (same descriptor number, same open file), a marker string and a present page at the same
/// addresses (inherited memory).
typedef struct mitosis_probe_child {
    pid_t pid;
    int shared_fd;
    /// The pipe's write end, held by the prober alone: the child exits when it closes.
    int lifeline_fd;
    uint64_t marker_address;
    uint64_t marker_length;
    uint64_t page_address;
} mitosis_probe_child;

/// Forks the probe child; 0 on success, -1 with errno.
int mitosis_probe_child_spawn(mitosis_probe_child *child);
/// Kills and reaps the probe child and closes the prober's ends of the pipe.
void mitosis_probe_child_end(const mitosis_probe_child *child);

#endif
