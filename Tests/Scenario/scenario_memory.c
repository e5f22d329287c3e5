// Memory scenarios for checkpoint tests and benchmarks.
//
// `memory`: known bytes in four kinds of memory — a private anonymous mapping (`anon`, 64 pages,
// the last 16 never touched), a shared anonymous mapping (`shared`, 16 pages), a private mapping
// of a file (`file`, 16 pages read, the first 4 written, i.e. copied on write) and the heap
// (`heap`, 8 pages from malloc). Byte i of page p of a region holds pattern(region, p, gen, i).
// Commands: `write REGION GEN P,P,…` rewrites pages with generation GEN; `map N` maps and fills
// a new anonymous mapping of N pages (reported as `new`), directly below the spare region if there
// is one (then N <= 16); `spare N` maps N anonymous pages that are never touched (reported as
// `spare`) above a hole of 16 pages;
// `discard P` madvise(DONTNEED)s anon page P.
//
// `churn MIB PERCENT INTERVAL_MS`: a MIB-sized anonymous area, all written, then a thread
// rewrites PERCENT % of its pages (spread, a different set each time) every INTERVAL_MS.
// Reports `churn=addr pages=N`; `count` reports `rewrites=…` (pages written so far), `rounds=…`
// and `busy_ns=…` (time spent writing, pauses excluded); `burst N`
// rewrites the next N pages at once.
#define _GNU_SOURCE
#include "scenario.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#define PAGE 4096

static unsigned char pattern(int region, int page, int gen, int i) {
    return (unsigned char)(region * 31 + page * 7 + gen * 13 + i);
}

enum { ANON, SHARED, FILE_PRIVATE, HEAP, REGIONS };
/// The generation each page was last filled with; 0: never filled by `fill`.
static int generations[REGIONS][64];

static void fill(unsigned char *base, int region, int page, int gen) {
    for (int i = 0; i < PAGE; i++) base[(size_t)page * PAGE + i] = pattern(region, page, gen, i);
    generations[region][page] = gen;
}

static const char *region_names[REGIONS] = { "anon", "shared", "file", "heap" };
static unsigned char *regions[REGIONS];
static const int region_pages[REGIONS] = { 64, 16, 16, 8 };
static unsigned char *spare;

/// The kernel rewrites a thread's rseq area (its CPU number) whenever it resumes on another CPU,
/// e.g. after a thaw: memory read after a checkpoint would then differ from memory at the
/// checkpoint. Re-executes this scenario with glibc's rseq registration off, once.
static void without_rseq(void) {
    if (getenv("MITOSIS_SCENARIO_NO_RSEQ")) return;
    static char cmdline[4096];
    int fd = open("/proc/self/cmdline", O_RDONLY);
    ssize_t length = fd < 0 ? -1 : read(fd, cmdline, sizeof cmdline - 1);
    if (fd >= 0) close(fd);
    if (length <= 0) return;
    char *args[64];
    int count = 0;
    for (char *p = cmdline; p < cmdline + length && count < 63; p += strlen(p) + 1) args[count++] = p;
    args[count] = NULL;
    setenv("MITOSIS_SCENARIO_NO_RSEQ", "1", 1);
    setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0", 1);
    execv("/proc/self/exe", args);
}

static int memory_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    without_rseq();
    regions[ANON] = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    regions[SHARED] = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    char path[] = "/tmp/mitosis-memory-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    unsigned char page[PAGE];
    for (int p = 0; p < 16; p++) {
        for (int i = 0; i < PAGE; i++) page[i] = pattern(FILE_PRIVATE, p, 0, i) ^ 0xff;
        if (write(fd, page, PAGE) != PAGE) return -1;
    }
    regions[FILE_PRIVATE] = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    unlink(path);
    regions[HEAP] = malloc(9 * PAGE);
    if (regions[ANON] == MAP_FAILED || regions[SHARED] == MAP_FAILED || regions[FILE_PRIVATE] == MAP_FAILED || !regions[HEAP]) return -1;
    regions[HEAP] = (unsigned char *)(((uintptr_t)regions[HEAP] + PAGE - 1) & ~(uintptr_t)(PAGE - 1));
    for (int p = 0; p < 48; p++) fill(regions[ANON], ANON, p, 1);
    for (int p = 0; p < 16; p++) fill(regions[SHARED], SHARED, p, 1);
    volatile unsigned char sink = 0;
    for (int p = 0; p < 16; p++) sink ^= regions[FILE_PRIVATE][(size_t)p * PAGE];  // populate: clean file pages
    (void)sink;
    for (int p = 0; p < 4; p++) fill(regions[FILE_PRIVATE], FILE_PRIVATE, p, 1);
    for (int p = 0; p < 8; p++) fill(regions[HEAP], HEAP, p, 1);
    for (int r = 0; r < REGIONS; r++) scenario_report(region_names[r], "0x%lx", (unsigned long)regions[r]);
    scenario_report("page_size", "%d", PAGE);
    return 0;
}

static int memory_step(const char *command) {
    char name[16];
    int gen;
    char list[4096];
    if (sscanf(command, "write %15s %d %4095s", name, &gen, list) == 3) {
        int region = -1;
        for (int r = 0; r < REGIONS; r++) if (strcmp(name, region_names[r]) == 0) region = r;
        if (region < 0) return -1;
        for (char *item = strtok(list, ","); item; item = strtok(NULL, ",")) {
            int page = atoi(item);
            if (page < 0 || page >= region_pages[region]) return -1;
            fill(regions[region], region, page, gen);
        }
        return 0;
    }
    int count;
    if (sscanf(command, "spare %d", &count) == 1) {
        // 16 pages more, unmapped again at once: the hole below the spare region that `map` fills.
        unsigned char *area = mmap(NULL, (size_t)(count + 16) * PAGE, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (area == MAP_FAILED || munmap(area, 16 * PAGE) != 0) return -1;
        spare = area + 16 * PAGE;
        scenario_report("spare", "0x%lx", (unsigned long)spare);
        return 0;
    }
    if (sscanf(command, "map %d", &count) == 1) {
        // Below the spare region: a written mapping right under an untouched one is where
        // Linux 6.12's VMA merging differs between userfaultfd register and unregister.
        void *hint = spare ? spare - (size_t)count * PAGE : NULL;
        unsigned char *fresh = mmap(hint, (size_t)count * PAGE, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | (spare ? MAP_FIXED_NOREPLACE : 0), -1, 0);
        if (fresh == MAP_FAILED) return -1;
        for (int p = 0; p < count; p++) memset(fresh + (size_t)p * PAGE, 0x40 + p, PAGE);
        scenario_report("new", "0x%lx", (unsigned long)fresh);
        return 0;
    }
    int page;
    if (sscanf(command, "discard %d", &page) == 1) {
        if (page < 0 || page >= region_pages[ANON]) return -1;
        generations[ANON][page] = 0;
        return madvise(regions[ANON] + (size_t)page * PAGE, PAGE, MADV_DONTNEED);
    }
    return -1;
}
/// Every page holds what it was last given: its pattern and generation, the file's own bytes for
/// file pages never written, zeros for anonymous pages never touched.
static int memory_check(char *problem, size_t size) {
    for (int r = 0; r < REGIONS; r++) {
        for (int p = 0; p < region_pages[r]; p++) {
            const unsigned char *page = regions[r] + (size_t)p * PAGE;
            for (int i = 0; i < PAGE; i++) {
                int gen = generations[r][p];
                unsigned char expected = gen ? pattern(r, p, gen, i) : r == FILE_PRIVATE ? pattern(r, p, 0, i) ^ 0xff : 0;
                if (page[i] != expected) {
                    snprintf(problem, size, "%s_page_%d_byte_%d_is_%d_not_%d", region_names[r], p, i, page[i], expected);
                    return -1;
                }
            }
        }
    }
    return 0;
}
SCENARIO_CHECKED(memory, memory_setup, memory_step, memory_check)

static unsigned char *churn_area;
static size_t churn_pages;
static int churn_percent, churn_interval_ms;
static atomic_ulong churn_rewrites, churn_rounds, churn_busy_ns;

static unsigned long monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (unsigned long)now.tv_sec * 1000000000UL + (unsigned long)now.tv_nsec;
}

static void *churner(void *arg) {
    (void)arg;
    size_t per_round = churn_pages * (size_t)churn_percent / 100;
    if (per_round == 0) per_round = 1;
    size_t stride = churn_pages / per_round;
    unsigned long round = 0;
    for (;;) {
        struct timespec pause = { churn_interval_ms / 1000, (long)(churn_interval_ms % 1000) * 1000000L };
        nanosleep(&pause, NULL);
        round++;
        unsigned long started = monotonic_ns();
        for (size_t k = 0; k < per_round; k++) {
            size_t page = (k * stride + round) % churn_pages;
            memset(churn_area + page * PAGE, (int)(round & 0xff), 64);
        }
        atomic_fetch_add(&churn_busy_ns, monotonic_ns() - started);
        atomic_fetch_add(&churn_rounds, 1);
        atomic_fetch_add(&churn_rewrites, per_round);
    }
    return NULL;
}

static int churn_setup(int argc, char **argv) {
    without_rseq();
    size_t mib = argc > 0 ? (size_t)atol(argv[0]) : 1024;
    churn_percent = argc > 1 ? atoi(argv[1]) : 1;
    churn_interval_ms = argc > 2 ? atoi(argv[2]) : 100;
    churn_pages = mib * 1024 * 1024 / PAGE;
    churn_area = mmap(NULL, churn_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (churn_area == MAP_FAILED) return -1;
    for (size_t p = 0; p < churn_pages; p++) memset(churn_area + p * PAGE, (int)(p & 0xff), PAGE);
    scenario_report("churn", "0x%lx", (unsigned long)churn_area);
    scenario_report("pages", "%zu", churn_pages);
    if (churn_percent > 0) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, churner, NULL) != 0) return -1;
    }
    return 0;
}

static size_t burst_cursor;

static int churn_step(const char *command) {
    unsigned long burst;
    if (sscanf(command, "burst %lu", &burst) == 1) {
        // `burst N`: rewrites the next N pages (64 bytes each), all distinct while N <= pages.
        for (unsigned long k = 0; k < burst; k++) {
            memset(churn_area + burst_cursor * PAGE, (int)(k & 0xff), 64);
            burst_cursor = (burst_cursor + 1) % churn_pages;
        }
        return 0;
    }
    if (strcmp(command, "count") == 0) {
        scenario_report("rewrites", "%lu", (unsigned long)atomic_load(&churn_rewrites));
        scenario_report("rounds", "%lu", (unsigned long)atomic_load(&churn_rounds));
        scenario_report("busy_ns", "%lu", (unsigned long)atomic_load(&churn_busy_ns));
        return 0;
    }
    return -1;
}
SCENARIO(churn, churn_setup, churn_step)
