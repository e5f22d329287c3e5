// Remote syscall injection: system call numbers (<sys/syscall.h> defines them as macros that
// Swift does not import), the rt_sigreturn frame that makes an injection self-healing, and the
// deferral of fatal signals while a target thread holds borrowed registers.
#ifndef MITOSIS_INJECTION_H
#define MITOSIS_INJECTION_H
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/user.h>

static const long MITOSIS_SYS_read = SYS_read;
static const long MITOSIS_SYS_write = SYS_write;
static const long MITOSIS_SYS_close = SYS_close;
static const long MITOSIS_SYS_mmap = SYS_mmap;
static const long MITOSIS_SYS_munmap = SYS_munmap;
static const long MITOSIS_SYS_getpid = SYS_getpid;
static const long MITOSIS_SYS_gettid = SYS_gettid;
static const long MITOSIS_SYS_fcntl = SYS_fcntl;
static const long MITOSIS_SYS_userfaultfd = SYS_userfaultfd;
static const long MITOSIS_SYS_prctl = SYS_prctl;

/// `syscall; mov $15, %eax; syscall`: runs the injected call, then rt_sigreturn(2) (15) with
/// the frame at the stack pointer. Placed in the target's vDSO padding.
static const uint8_t MITOSIS_SELF_HEALING_STUB[9] = { 0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05 };

/// For a thread the kernel would resume through restart_syscall(2) (a call that returned
/// -ERESTART_RESTARTBLOCK: nanosleep, clock_nanosleep, a timed futex wait, poll): rt_sigreturn
/// would discard its restart block, and restart_syscall would then fail with EINTR. This stub
/// runs the injected call and puts the registers back without rt_sigreturn, from a block at the
/// stack pointer: `syscall; mov $14,%eax; mov $2,%edi; mov %rsp,%rsi; xor %edx,%edx;
/// mov $8,%r10d; syscall` (rt_sigprocmask(SIG_SETMASK, block, NULL, 8)); `add $8,%rsp;
/// pop %r15 … %r8, %rbp, %rdi, %rsi, %rdx, %rcx, %rbx, %rax; popfq; ret $128` (the return
/// address sits just below the red zone; the FPU state is left alone: nothing injected touches
/// it). The block is the signal mask, those fifteen registers, rflags and rip: 144 bytes.
static const uint8_t MITOSIS_RESTART_KEEPING_STUB[56] = {
    0x0f, 0x05, 0xb8, 0x0e, 0x00, 0x00, 0x00, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48, 0x89, 0xe6,
    0x31, 0xd2, 0x41, 0xba, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xc4, 0x08,
    0x41, 0x5f, 0x41, 0x5e, 0x41, 0x5d, 0x41, 0x5c, 0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58,
    0x5d, 0x5f, 0x5e, 0x5a, 0x59, 0x5b, 0x58, 0x9d, 0xc2, 0x80, 0x00,
};

/// Lays out an x86-64 rt_sigreturn frame in `out` the way the kernel lays one out for a signal:
/// below `stack_top` (the thread's stack pointer minus its red zone), the extended FPU state
/// `xstate` (`xstate_length` bytes from PTRACE_GETREGSET NT_X86_XSTATE, or 512 bytes of
/// NT_PRFPREG) 64-byte aligned and followed by FP_XSTATE_MAGIC2, and below that the frame with
/// `regs`, `sigmask` and an alternate-stack record the kernel ignores. `regs` must already
/// describe where the thread resumes (restarts folded in: rt_sigreturn restarts nothing).
/// Returns the number of bytes written to `out` (to be copied to the target at `*frame`), or 0
/// if `capacity` is too small. rt_sigreturn runs with `%rsp = *frame + 8`.
size_t mitosis_sigreturn_frame(uint8_t *out, size_t capacity, uint64_t stack_top,
                               const struct user_regs_struct *regs, uint64_t sigmask,
                               const uint8_t *xstate, size_t xstate_length, int is_xsave,
                               uint64_t *frame);

/// Starts a window in which SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGPIPE sent to this process
/// (to any of its threads) are held: a handler notes them, and `mitosis_fatal_signals_release`
/// puts the previous dispositions back and re-sends them. Windows nest.
void mitosis_fatal_signals_hold(void);
void mitosis_fatal_signals_release(void);

#endif
