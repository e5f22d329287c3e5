// ptrace(2) and waitpid(2) for Swift: glibc's ptrace() is variadic and the W* status
// macros are function-like, so Swift cannot call either directly.
#ifndef MITOSIS_PTRACE_H
#define MITOSIS_PTRACE_H
#include <stdint.h>
#include <sys/types.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <sys/user.h>
#include <signal.h>
#include <elf.h>

/// ptrace(request, pid, addr, data); returns -1 and sets errno on failure.
long mitosis_ptrace(int request, pid_t pid, void *addr, void *data);
/// PTRACE_PEEKDATA distinguishes "-1 read" from failure only through errno: this does both.
int mitosis_ptrace_peek(pid_t pid, uint64_t addr, uint64_t *out);

static inline int mitosis_wifexited(int s) { return WIFEXITED(s); }
static inline int mitosis_wexitstatus(int s) { return WEXITSTATUS(s); }
static inline int mitosis_wifsignaled(int s) { return WIFSIGNALED(s); }
static inline int mitosis_wtermsig(int s) { return WTERMSIG(s); }
static inline int mitosis_wifstopped(int s) { return WIFSTOPPED(s); }
static inline int mitosis_wstopsig(int s) { return WSTOPSIG(s); }
/// The PTRACE_EVENT_* number of a stop, 0 for a plain signal-delivery stop.
static inline int mitosis_wptrace_event(int s) { return (s >> 16) & 0xff; }

static const int MITOSIS_WALL = __WALL;
static const int MITOSIS_PTRACE_SEIZE = 0x4206;
static const int MITOSIS_PTRACE_INTERRUPT = 0x4207;
static const int MITOSIS_PTRACE_LISTEN = 0x4208;
static const int MITOSIS_PTRACE_EVENT_STOP = 128;
/// Syscall-stops report SIGTRAP | 0x80, so they cannot be mistaken for a real SIGTRAP.
static const int MITOSIS_PTRACE_O_TRACESYSGOOD = 1;
static const int MITOSIS_PTRACE_GETSIGMASK = 0x420a;
static const int MITOSIS_PTRACE_GETREGSET = 0x4204;
static const int MITOSIS_PTRACE_GETSIGINFO = 0x4202;
static const int MITOSIS_PTRACE_SETSIGINFO = 0x4203;
static const int MITOSIS_NT_PRSTATUS = NT_PRSTATUS;
static const int MITOSIS_NT_PRFPREG = NT_PRFPREG;
static const int MITOSIS_NT_X86_XSTATE = 0x202;

#endif
