// Restore: the husk (an empty process created with a chosen pid) and the system calls injected
// into it, whose numbers <sys/syscall.h> defines as macros Swift does not import.
#ifndef MITOSIS_RESTORE_H
#define MITOSIS_RESTORE_H
#include <stdint.h>
#include <sys/types.h>
#include <sys/syscall.h>

static const long MITOSIS_SYS_brk = SYS_brk;
static const long MITOSIS_SYS_mprotect = SYS_mprotect;
static const long MITOSIS_SYS_madvise = SYS_madvise;
static const long MITOSIS_SYS_rt_sigaction = SYS_rt_sigaction;
static const long MITOSIS_SYS_arch_prctl = SYS_arch_prctl;
static const long MITOSIS_SYS_openat = SYS_openat;
static const long MITOSIS_SYS_lseek = SYS_lseek;
static const long MITOSIS_SYS_dup3 = SYS_dup3;
static const long MITOSIS_SYS_chdir = SYS_chdir;
static const long MITOSIS_SYS_umask = SYS_umask;
static const long MITOSIS_SYS_set_tid_address = SYS_set_tid_address;
static const long MITOSIS_SYS_set_robust_list = SYS_set_robust_list;
static const long MITOSIS_SYS_eventfd2 = SYS_eventfd2;
static const long MITOSIS_SYS_pipe2 = SYS_pipe2;
static const long MITOSIS_SYS_epoll_create1 = SYS_epoll_create1;
static const long MITOSIS_SYS_epoll_ctl = SYS_epoll_ctl;
static const long MITOSIS_SYS_rseq = 334;
static const long MITOSIS_SYS_clone3 = 435;

static const int MITOSIS_PTRACE_SETREGSET = 0x4205;
static const int MITOSIS_PTRACE_SETSIGMASK = 0x420b;
static const int MITOSIS_PTRACE_O_TRACECLONE = 0x8;
static const int MITOSIS_PTRACE_O_EXITKILL = 0x100000;
static const int MITOSIS_PTRACE_EVENT_CLONE = 3;

/// The kernel's `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1, 80 bytes).
typedef struct mitosis_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
} mitosis_clone_args;

/// The kernel's `struct prctl_mm_map` (PR_SET_MM_MAP).
typedef struct mitosis_prctl_mm_map {
    uint64_t start_code;
    uint64_t end_code;
    uint64_t start_data;
    uint64_t end_data;
    uint64_t start_brk;
    uint64_t brk;
    uint64_t start_stack;
    uint64_t arg_start;
    uint64_t arg_end;
    uint64_t env_start;
    uint64_t env_end;
    uint64_t auxv;
    uint32_t auxv_size;
    uint32_t exe_fd;
} mitosis_prctl_mm_map;

/// Creates the husk: a child with exactly pid `pid` (`clone3` with `set_tid`), which blocks every
/// signal, dies with the calling thread (PR_SET_PDEATHSIG), closes every descriptor and then
/// waits in `pause()` forever, running only raw system calls (it is a fork of a multithreaded
/// process). Returns the pid, or -1 with errno (EEXIST: the pid is taken; EINVAL: above pid_max).
pid_t mitosis_husk_spawn(pid_t pid);
/// Creates the husk with pid `pid` inside a new pid namespace: a small init (pid 1 there, a
/// child of the calling thread, which returns to its own namespace) creates it as its child
/// and reports it. Returns the husk's pid as this process sees it, with the init's in
/// `*init_pid` and in `*control` a pipe the init waits on: close it once the restore ends
/// (or let Mitosis die); the init then reaps what is left and exits when its last child does.
/// Returns -1 with errno (from unshare, clone3: EINVAL above pid_max…).
pid_t mitosis_husk_spawn_pidns(pid_t pid, pid_t *init_pid, int *control);
/// Copies the unread bytes (at most `capacity`) of the pipe that `path` (a `/proc/PID/fd/N`
/// link to either end) refers to, without consuming them: a new read end is opened through the
/// link and `tee(2)`d into a pipe of this process. Stores the pipe's capacity (F_GETPIPE_SZ) in
/// `*pipe_size`. Returns the number of bytes copied, or -1 with errno.
long mitosis_pipe_peek(const char *path, void *buffer, unsigned long capacity, int *pipe_size);
/// XCR0: the XSAVE state components this CPU and kernel enable (`xgetbv` with ecx = 0).
static inline uint64_t mitosis_xcr0(void) {
    uint32_t low, high;
    __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
    return ((uint64_t)high << 32) | low;
}
/// Fills `length` bytes at `address` (registered with UFFDIO_REGISTER_MODE_MISSING on the
/// userfaultfd `fd`) from `source` with UFFDIO_COPY, looping over partial copies; 0 or -1.
int mitosis_uffdio_copy_all(int fd, uint64_t address, const void *source, uint64_t length);
/// UFFDIO_REGISTER of [start, start+length) for missing-page faults; 0 or -1.
int mitosis_uffdio_register_missing(int fd, uint64_t start, uint64_t length);
/// get_robust_list(2) of another thread; 0 or -1 with errno.
int mitosis_get_robust_list(pid_t tid, uint64_t *head, uint64_t *length);

#endif
