// The scenario harness: each scenario file builds one known process state and reports the
// facts a test will assert (fd numbers, inodes, addresses) as key=value pairs.
//
// Protocol on stdin/stdout: after setup the harness prints `READY k=v k=v…`. Each line then
// read from stdin is passed to the scenario's `step` (which may report new facts) and answered
// with another `READY …` line. The command `check` runs the scenario's self-check and answers
// `READY check=PASS` or `READY check=FAIL:<first-problem>`. EOF on stdin — the test ended or died — exits the process, so
// no scenario outlives its test. The command `commands PATH` answers `READY detached=1`, points
// fds 0–2 at /dev/null and from then on takes commands from connections to a unix socket
// listening at PATH (one at a time): the process holds nothing of the test, so that it can be
// checkpointed, killed, restored and asked again; it then ends only when killed.
#ifndef MITOSIS_SCENARIO_H
#define MITOSIS_SCENARIO_H
#include <stddef.h>
#include <stdint.h>

typedef struct scenario {
    const char *name;
    /// Builds the state; argc/argv are the arguments after the scenario name. Returns 0 on success.
    int (*setup)(int argc, char **argv);
    /// Handles one command line (without newline); may be NULL. Returns 0 on success.
    int (*step)(const char *command);
    struct scenario *next;
    /// When set, the main thread runs this (it never returns) and commands are read by another
    /// thread: for scenarios whose main thread must be in a known state (Mitosis injects there).
    void (*main_thread)(void);
    /// Verifies the state the scenario built, from the inside (CRIU's ZDTM shape), so that a test
    /// can prove a checkpointed, frozen or restored copy intact without knowing its addresses.
    /// Returns 0 when intact; else writes the first problem (no spaces) into `problem`. May be NULL.
    int (*check)(char *problem, size_t size);
} scenario;

void scenario_register(scenario *s);
/// Adds `key=value` to the next READY line. Values must not contain spaces.
void scenario_report(const char *key, const char *format, ...) __attribute__((format(printf, 2, 3)));
/// Raises RLIMIT_NOFILE (soft, and hard if needed) so that `count` more descriptors fit.
void scenario_raise_fd_limit(int count);
/// Answers `READY detached=1`, then points fds 0–2 at /dev/null, so that a checkpointed (and
/// later restored) process holds no descriptor of the test that started it. /dev/null stays
/// open as fd 3 when it lands there (the scenarios' descriptor layout counts it).
void scenario_detach_standard_streams(void);
/// Fails the scenario: prints `FAIL message` and exits 1.
void scenario_fail(const char *format, ...) __attribute__((format(printf, 1, 2)));

/// A scenario with a self-check (see `check`).
#define SCENARIO_CHECKED(NAME, SETUP, STEP, CHECK)                                    \
    static scenario scenario_##NAME = { #NAME, SETUP, STEP, 0, 0, CHECK };           \
    __attribute__((constructor)) static void register_##NAME(void) { scenario_register(&scenario_##NAME); }

#define SCENARIO(NAME, SETUP, STEP)                                                   \
    static scenario scenario_##NAME = { #NAME, SETUP, STEP, 0 };                     \
    __attribute__((constructor)) static void register_##NAME(void) { scenario_register(&scenario_##NAME); }

#endif
