// Shared memory for incremental-checkpoint tests and benchmarks.
//
// `sharedmem [PAGES]`: known bytes in three kinds of shared memory — a shared anonymous mapping
// (`shared`, PAGES pages, default 256), a memfd mapped shared (`memfd`, 64 pages, its descriptor
// kept open) and a SysV segment (`sysv`, 16 pages, already marked for removal so that it goes
// with the process). Every page is written at setup; byte i of page p holds
// pattern(region, p, gen, i). Commands, each REGION one of shared, memfd, sysv:
// `write REGION GEN P,P,…` rewrites pages here; `forkwrite REGION GEN P,P,…` has a forked child
// rewrite them (out of sight of this process's page tables) and waits for it; `pwrite memfd GEN P,…`
// rewrites memfd pages with pwrite(2); `spread REGION GEN STEP` rewrites every STEP-th page.
#define _GNU_SOURCE
#include "scenario.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PAGE 4096

enum { SHARED, MEMFD, SYSV, REGIONS };
static const char *names[REGIONS] = { "shared", "memfd", "sysv" };
static unsigned char *bases[REGIONS];
static int sizes[REGIONS] = { 256, 64, 16 };
static int *generations[REGIONS];
static int memfd = -1;

static unsigned char pattern(int region, int page, int gen, int i) {
    return (unsigned char)(region * 29 + page * 11 + gen * 17 + i);
}

static void fill(unsigned char *page, int region, int index, int gen) {
    for (int i = 0; i < PAGE; i++) page[i] = pattern(region, index, gen, i);
}

static int shared_setup(int argc, char **argv) {
    if (argc > 0) sizes[SHARED] = atoi(argv[0]);
    if (sizes[SHARED] <= 0) return -1;
    bases[SHARED] = mmap(NULL, (size_t)sizes[SHARED] * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memfd = memfd_create("mitosis-shared", 0);
    if (memfd < 0 || ftruncate(memfd, (off_t)sizes[MEMFD] * PAGE) != 0) return -1;
    bases[MEMFD] = mmap(NULL, (size_t)sizes[MEMFD] * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    int id = shmget(IPC_PRIVATE, (size_t)sizes[SYSV] * PAGE, IPC_CREAT | 0600);
    if (id < 0) return -1;
    bases[SYSV] = shmat(id, NULL, 0);
    shmctl(id, IPC_RMID, NULL);
    if (bases[SHARED] == MAP_FAILED || bases[MEMFD] == MAP_FAILED || bases[SYSV] == (void *)-1) return -1;
    for (int r = 0; r < REGIONS; r++) {
        generations[r] = calloc((size_t)sizes[r], sizeof(int));
        if (!generations[r]) return -1;
        for (int p = 0; p < sizes[r]; p++) {
            fill(bases[r] + (size_t)p * PAGE, r, p, 1);
            generations[r][p] = 1;
        }
        scenario_report(names[r], "0x%lx", (unsigned long)bases[r]);
    }
    scenario_report("shared_pages", "%d", sizes[SHARED]);
    scenario_report("memfd_fd", "%d", memfd);
    scenario_report("page_size", "%d", PAGE);
    return 0;
}

static int region_named(const char *name) {
    for (int r = 0; r < REGIONS; r++) if (strcmp(name, names[r]) == 0) return r;
    return -1;
}

static int shared_step(const char *command) {
    char verb[16], name[16], list[8192];
    int gen, step;
    if (sscanf(command, "spread %15s %d %d", name, &gen, &step) == 3) {
        int r = region_named(name);
        if (r < 0 || step <= 0) return -1;
        for (int p = 0; p < sizes[r]; p += step) {
            fill(bases[r] + (size_t)p * PAGE, r, p, gen);
            generations[r][p] = gen;
        }
        return 0;
    }
    if (sscanf(command, "%15s %15s %d %8191s", verb, name, &gen, list) != 4) return -1;
    int r = region_named(name);
    if (r < 0) return -1;
    int pages[1024], count = 0;
    for (char *item = strtok(list, ","); item && count < 1024; item = strtok(NULL, ",")) {
        int p = atoi(item);
        if (p < 0 || p >= sizes[r]) return -1;
        pages[count++] = p;
    }
    if (strcmp(verb, "write") == 0) {
        for (int k = 0; k < count; k++) fill(bases[r] + (size_t)pages[k] * PAGE, r, pages[k], gen);
    } else if (strcmp(verb, "forkwrite") == 0) {
        pid_t child = fork();
        if (child < 0) return -1;
        if (child == 0) {
            for (int k = 0; k < count; k++) fill(bases[r] + (size_t)pages[k] * PAGE, r, pages[k], gen);
            _exit(0);
        }
        int status;
        if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    } else if (strcmp(verb, "pwrite") == 0 && r == MEMFD) {
        unsigned char page[PAGE];
        for (int k = 0; k < count; k++) {
            fill(page, r, pages[k], gen);
            if (pwrite(memfd, page, PAGE, (off_t)pages[k] * PAGE) != PAGE) return -1;
        }
    } else {
        return -1;
    }
    for (int k = 0; k < count; k++) generations[r][pages[k]] = gen;
    return 0;
}

/// Every page holds the pattern of the generation it was last given.
static int shared_check(char *problem, size_t size) {
    for (int r = 0; r < REGIONS; r++) {
        for (int p = 0; p < sizes[r]; p++) {
            const unsigned char *page = bases[r] + (size_t)p * PAGE;
            for (int i = 0; i < PAGE; i++) {
                unsigned char expected = pattern(r, p, generations[r][p], i);
                if (page[i] != expected) {
                    snprintf(problem, size, "%s_page_%d_byte_%d_is_%d_not_%d", names[r], p, i, page[i], expected);
                    return -1;
                }
            }
        }
    }
    return 0;
}
SCENARIO_CHECKED(sharedmem, shared_setup, shared_step, shared_check)
