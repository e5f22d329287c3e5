#define _GNU_SOURCE
#include "scenario.h"
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <pthread.h>

static scenario *scenarios;
static char report_line[65536];
static size_t report_length;

void scenario_register(scenario *s) {
    s->next = scenarios;
    scenarios = s;
}

void scenario_report(const char *key, const char *format, ...) {
    va_list args;
    va_start(args, format);
    report_length += snprintf(report_line + report_length, sizeof report_line - report_length, " %s=", key);
    report_length += vsnprintf(report_line + report_length, sizeof report_line - report_length, format, args);
    va_end(args);
    if (report_length >= sizeof report_line) scenario_fail("report too long");
}

void scenario_fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("FAIL ", stdout);
    vfprintf(stdout, format, args);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(args);
    _exit(1);
}

void scenario_raise_fd_limit(int count) {
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    if (limit.rlim_cur >= (rlim_t)count + 64) return;
    limit.rlim_cur = (rlim_t)count + 64;
    if (limit.rlim_max < limit.rlim_cur) limit.rlim_max = limit.rlim_cur;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) scenario_fail("setrlimit");
}

/// Where READY lines go: stdout, or after `commands PATH` the connection being served.
static int reply_fd = 1;

static void ready(void) {
    if (reply_fd == 1) {
        printf("READY%s\n", report_line);
        fflush(stdout);
    } else {
        dprintf(reply_fd, "READY%s\n", report_line);
    }
    report_length = 0;
    report_line[0] = 0;
}

static scenario *current;

/// Answers the commands read from `input` until it ends. Returns the path of `commands PATH`
/// when that command came (the caller serves it), else NULL.
static char *answer(FILE *input) {
    static char *line;
    static size_t capacity;
    ssize_t length;
    while ((length = getline(&line, &capacity, input)) > 0) {
        if (line[length - 1] == '\n') line[length - 1] = 0;
        if (strcmp(line, "ping") == 0) { ready(); continue; }
        if (strncmp(line, "commands ", 9) == 0 && reply_fd == 1) return line + 9;
        if (strcmp(line, "check") == 0 && current->check) {
            char problem[256] = "";
            int intact = current->check(problem, sizeof problem) == 0;
            for (char *c = problem; *c; c++) if (*c == ' ') *c = '_';
            scenario_report("check", "%s%s", intact ? "PASS" : "FAIL:", intact ? "" : problem);
            ready();
            continue;
        }
        if (!current->step || current->step(line) != 0) scenario_fail("step '%s' failed", line);
        ready();
    }
    return NULL;
}

/// `commands PATH`: the commands come from connections to a unix socket listening at PATH, one
/// connection at a time, and fds 0–2 point at /dev/null: the process holds nothing of the test
/// that started it, so that it can be checkpointed, killed, restored and asked (`check`) again.
static void serve(const char *path) {
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof address.sun_path) scenario_fail("serve: path too long");
    strcpy(address.sun_path, path);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4) != 0)
        scenario_fail("commands %s", path);
    scenario_detach_standard_streams();
    for (;;) {
        int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (connection < 0) continue;
        FILE *input = fdopen(connection, "r");
        if (!input) { close(connection); continue; }
        reply_fd = connection;
        answer(input);
        reply_fd = -1;
        fclose(input);
    }
}

static void *command_loop(void *arg) {
    (void)arg;
    char *path = answer(stdin);
    if (path) serve(path);
    exit(0);  // stdin closed: the test is over
}

int main(int argc, char **argv) {
    // Only the harness's pipes (0, 1, 2) survive from the test process, so fd numbers are known.
    syscall(SYS_close_range, 3, ~0U, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (argc < 2) { fprintf(stderr, "usage: mitosis-scenario NAME [ARGS…]\n"); return 2; }
    scenario *s = scenarios;
    while (s && strcmp(s->name, argv[1]) != 0) s = s->next;
    if (!s) { fprintf(stderr, "unknown scenario %s\n", argv[1]); return 2; }
    scenario_report("pid", "%d", getpid());
    if (s->setup(argc - 2, argv + 2) != 0) scenario_fail("setup of %s failed", s->name);
    ready();
    current = s;
    if (s->main_thread) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, command_loop, NULL) != 0) scenario_fail("pthread_create");
        s->main_thread();
    }
    command_loop(NULL);
}

void scenario_detach_standard_streams(void) {
    printf("READY detached=1\n");
    fflush(stdout);
    int null = open("/dev/null", O_RDWR);
    if (null < 0) _exit(4);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 3) close(null);
}
