// A C++ target for the stacks tests: one thread blocked in pause() under a namespaced,
// templated call chain, so that demangling has something to do.
//
// Prints `READY pid=N tid=N` once the thread sleeps in pause() and after each command line;
// exits when stdin closes.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <pthread.h>
#include <semaphore.h>
#include <string>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

static sem_t started;
static pid_t worker_tid;

namespace mitosis_scenario {
template <typename T> struct Deep {
    __attribute__((noinline)) static void third(T) {
        worker_tid = static_cast<pid_t>(syscall(SYS_gettid));
        sem_post(&started);
        for (;;) pause();
    }
    __attribute__((noinline)) static void second(T value) { third(value); KEEP_FRAME(); }
};

__attribute__((noinline)) void first(int value) { Deep<int>::second(value); KEEP_FRAME(); }
}  // namespace mitosis_scenario

static void *run(void *) {
    mitosis_scenario::first(42);
    return nullptr;
}

/// Waits until thread `tid` sleeps inside pause().
static void await_pause(pid_t tid) {
    std::string path = "/proc/self/task/" + std::to_string(tid) + "/syscall";
    for (int attempt = 0; attempt < 2000; attempt++) {
        if (FILE *file = std::fopen(path.c_str(), "r")) {
            long number = -1;
            int matched = std::fscanf(file, "%ld", &number);
            std::fclose(file);
            if (matched == 1 && number == SYS_pause) return;
        }
        usleep(1000);
    }
}

int main() {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    sem_init(&started, 0, 0);
    pthread_t thread;
    if (pthread_create(&thread, nullptr, run, nullptr) != 0) return 1;
    sem_wait(&started);
    await_pause(worker_tid);
    // Answers every command line (`ping`) with the same READY line, as the scenario harness does.
    char buffer[256];
    do {
        std::printf("READY pid=%d tid=%d\n", getpid(), worker_tid);
        std::fflush(stdout);
    } while (std::fgets(buffer, sizeof buffer, stdin));
    return 0;
}
