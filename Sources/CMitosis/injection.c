#include "mitosis_injection.h"
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

// The kernel's x86-64 signal frame (arch/x86/include/asm/sigframe.h, uapi asm/sigcontext.h and
// asm/ucontext.h). glibc's ucontext_t has another layout, so it is spelled out here.
struct kernel_sigcontext {
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
    uint16_t cs, gs, fs, ss;
    uint64_t err, trapno, oldmask, cr2;
    uint64_t fpstate;
    uint64_t reserved1[8];
};
struct kernel_stack {
    uint64_t ss_sp;
    int32_t ss_flags;
    int32_t pad;
    uint64_t ss_size;
};
struct kernel_ucontext {
    uint64_t uc_flags;
    uint64_t uc_link;
    struct kernel_stack uc_stack;
    struct kernel_sigcontext uc_mcontext;
    uint64_t uc_sigmask;
};
struct kernel_rt_sigframe {
    uint64_t pretcode;
    struct kernel_ucontext uc;
    uint8_t info[128];
};
_Static_assert(sizeof(struct kernel_sigcontext) == 256, "struct sigcontext");
_Static_assert(sizeof(struct kernel_rt_sigframe) == 440, "struct rt_sigframe");

#define UC_FP_XSTATE 0x1
#define UC_SIGCONTEXT_SS 0x2
#define UC_STRICT_RESTORE_SS 0x4
#define FP_XSTATE_MAGIC2 0x46505845u
#define FX_SW_XSTATE_SIZE_OFFSET 480  // fxregs_state.sw_reserved: magic1, extended_size, xfeatures, xstate_size

size_t mitosis_sigreturn_frame(uint8_t *out, size_t capacity, uint64_t stack_top,
                               const struct user_regs_struct *regs, uint64_t sigmask,
                               const uint8_t *xstate, size_t xstate_length, int is_xsave,
                               uint64_t *frame) {
    // The kernel looks for MAGIC2 right after the state size the xsave header announces.
    size_t state_size = xstate_length;
    if (is_xsave && xstate_length >= 512) {
        uint32_t announced;
        memcpy(&announced, xstate + FX_SW_XSTATE_SIZE_OFFSET, 4);
        if (announced >= 512 && announced <= xstate_length) state_size = announced;
    }
    uint64_t fpstate = (stack_top - state_size - 4) & ~(uint64_t)63;
    uint64_t start = ((fpstate - sizeof(struct kernel_rt_sigframe)) & ~(uint64_t)15) - 8;
    size_t length = (size_t)(stack_top - start);
    if (length > capacity) return 0;
    memset(out, 0, length);

    struct kernel_rt_sigframe f;
    memset(&f, 0, sizeof f);
    f.uc.uc_flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS | (is_xsave ? UC_FP_XSTATE : 0);
    // rt_sigreturn installs uc_stack as the alternate signal stack but ignores every error:
    // flags that are neither 0, SS_ONSTACK nor SS_DISABLE make it leave the current one alone.
    f.uc.uc_stack.ss_flags = 3;
    struct kernel_sigcontext *c = &f.uc.uc_mcontext;
    c->r8 = regs->r8; c->r9 = regs->r9; c->r10 = regs->r10; c->r11 = regs->r11;
    c->r12 = regs->r12; c->r13 = regs->r13; c->r14 = regs->r14; c->r15 = regs->r15;
    c->rdi = regs->rdi; c->rsi = regs->rsi; c->rbp = regs->rbp; c->rbx = regs->rbx;
    c->rdx = regs->rdx; c->rax = regs->rax; c->rcx = regs->rcx; c->rsp = regs->rsp;
    c->rip = regs->rip; c->eflags = regs->eflags;
    c->cs = (uint16_t)regs->cs; c->ss = (uint16_t)regs->ss;
    c->fs = (uint16_t)regs->fs; c->gs = (uint16_t)regs->gs;
    c->fpstate = fpstate;
    f.uc.uc_sigmask = sigmask;
    memcpy(out, &f, sizeof f);
    memcpy(out + (fpstate - start), xstate, state_size);
    if (is_xsave) {
        uint32_t magic2 = FP_XSTATE_MAGIC2;
        memcpy(out + (fpstate - start) + state_size, &magic2, 4);
    }
    *frame = start;
    return length;
}

// MARK: Fatal signals held while registers are borrowed

static const int held_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE };
#define HELD_COUNT (sizeof held_signals / sizeof held_signals[0])
static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static int hold_depth;
static struct sigaction previous[HELD_COUNT];
static volatile sig_atomic_t arrived[HELD_COUNT];

static void note_signal(int signal) {
    for (size_t i = 0; i < HELD_COUNT; i++) if (held_signals[i] == signal) arrived[i] = 1;
}

void mitosis_fatal_signals_hold(void) {
    pthread_mutex_lock(&hold_lock);
    if (hold_depth++ == 0) {
        struct sigaction note;
        memset(&note, 0, sizeof note);
        note.sa_handler = note_signal;
        note.sa_flags = SA_RESTART;
        sigfillset(&note.sa_mask);
        for (size_t i = 0; i < HELD_COUNT; i++) {
            arrived[i] = 0;
            sigaction(held_signals[i], NULL, &previous[i]);
            // An ignored signal cannot hurt; a handler of the application's runs afterwards.
            if (previous[i].sa_handler != SIG_IGN) sigaction(held_signals[i], &note, NULL);
        }
    }
    pthread_mutex_unlock(&hold_lock);
}

void mitosis_fatal_signals_release(void) {
    pthread_mutex_lock(&hold_lock);
    if (hold_depth > 0 && --hold_depth == 0) {
        for (size_t i = 0; i < HELD_COUNT; i++) {
            if (previous[i].sa_handler == SIG_IGN) continue;
            sigaction(held_signals[i], &previous[i], NULL);
            if (arrived[i]) {
                arrived[i] = 0;
                kill(getpid(), held_signals[i]);
            }
        }
    }
    pthread_mutex_unlock(&hold_lock);
}
