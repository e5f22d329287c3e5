// mitosis-demo-target: a small, ordinary-looking server process for `mitosis demo` to inspect.
//
// It holds one of each thing Mitosis describes: named threads blocked in distinct call chains,
// a regular file at a known offset (and mapped), a pipe, a UNIX socketpair, a TCP listener with
// one connection on 127.0.0.1, an eventfd, and anonymous memory it rewrites a little every tick.
// It prints `READY pid=… key=value…` once set up, and exits when stdin closes or on SIGTERM/SIGINT,
// removing its data file.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
enum { FILE_SIZE = 16384, FILE_OFFSET = 1000, ANON_SIZE = 65536, PAGE = 4096 };

static char data_path[4096];
static int data_fd, pipe_fds[2], pair_fds[2], listener_fd, client_fd, server_fd, event_fd;
static unsigned char *anon_memory;
static volatile uint64_t *file_counter;  // the first bytes of the mapped data file

static void die(const char *what) {
    fprintf(stderr, "mitosis-demo-target: %s: %s\n", what, strerror(errno));
    if (data_path[0]) unlink(data_path);
    exit(1);
}

static void start_thread(const char *name, void *(*body)(void *)) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, body, NULL) != 0) die("pthread_create");
    pthread_setname_np(thread, name);
}

// demo-ticker: ticker_main → tick_forever → sleep_one_tick (nanosleep), rewriting memory each tick.
static NOINLINE void sleep_one_tick(void) {
    struct timespec tick = { 0, 100 * 1000 * 1000 };
    nanosleep(&tick, NULL);
}

static NOINLINE void rewrite_memory(uint64_t round) {
    size_t page = (size_t)(round % (ANON_SIZE / PAGE));
    memcpy(anon_memory + page * PAGE, &round, sizeof round);
    *file_counter = round;
}

static NOINLINE int tick_forever(void) {
    for (uint64_t round = 1;; round++) {
        sleep_one_tick();
        rewrite_memory(round);
    }
    return 0;
}

static void *ticker_main(void *arg) {
    (void)arg;
    return (void *)(intptr_t)tick_forever();
}

// demo-net: net_main → serve_client → await_request (read on the accepted TCP connection).
static NOINLINE ssize_t await_request(char *buffer, size_t size) {
    return read(server_fd, buffer, size);
}

static NOINLINE int serve_client(void) {
    char buffer[256];
    for (;;) {
        ssize_t n = await_request(buffer, sizeof buffer);
        if (n <= 0 && errno != EINTR) break;
        if (n > 0 && write(server_fd, buffer, (size_t)n) < 0) break;  // echo
    }
    return 0;
}

static void *net_main(void *arg) {
    (void)arg;
    return (void *)(intptr_t)serve_client();
}

// demo-pipe: pipe_main → pump_pipe → await_byte (read on the pipe).
static NOINLINE ssize_t await_byte(char *byte) {
    return read(pipe_fds[0], byte, 1);
}

static NOINLINE int pump_pipe(void) {
    char byte;
    for (;;) {
        ssize_t n = await_byte(&byte);
        if (n == 0) break;
        if (n > 0 && write(pair_fds[0], &byte, 1) < 0) break;  // relay into the socketpair
    }
    return 0;
}

static void *pipe_main(void *arg) {
    (void)arg;
    return (void *)(intptr_t)pump_pipe();
}

// demo-events: events_main → wait_for_event (read on the eventfd).
static NOINLINE int wait_for_event(uint64_t *value) {
    return (int)read(event_fd, value, sizeof *value);
}

static NOINLINE int count_events(void) {
    uint64_t total = 0, value;
    for (;;) {
        if (wait_for_event(&value) == sizeof value) total += value;
    }
    return (int)total;
}

static void *events_main(void *arg) {
    (void)arg;
    return (void *)(intptr_t)count_events();
}

// demo-stdin: the end of stdin ends the process.
static void *stdin_main(void *arg) {
    (void)arg;
    char buffer[256];
    while (read(0, buffer, sizeof buffer) > 0 || errno == EINTR) {}
    kill(getpid(), SIGTERM);
    return NULL;
}

static void open_data_file(void) {
    const char *directory = getenv("TMPDIR");
    snprintf(data_path, sizeof data_path, "%s/mitosis-demo-%d.data", directory && *directory ? directory : "/tmp", getpid());
    data_fd = open(data_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (data_fd < 0) die("open data file");
    char line[64];
    for (int written = 0; written < FILE_SIZE;) {
        int n = snprintf(line, sizeof line, "mitosis demo line %06d\n", written);
        if (written + n > FILE_SIZE) n = FILE_SIZE - written;
        if (write(data_fd, line, (size_t)n) != n) die("write data file");
        written += n;
    }
    if (lseek(data_fd, FILE_OFFSET, SEEK_SET) != FILE_OFFSET) die("lseek");
    void *mapped = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, data_fd, 0);
    if (mapped == MAP_FAILED) die("mmap data file");
    file_counter = mapped;
    *file_counter = 0;  // the ticker counts its rounds here
}

static void open_sockets(void) {
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) die("pipe2");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair_fds) != 0) die("socketpair");
    listener_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t length = sizeof address;
    if (listener_fd < 0 || bind(listener_fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener_fd, 8) != 0 || getsockname(listener_fd, (struct sockaddr *)&address, &length) != 0)
        die("TCP listener");
    client_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (client_fd < 0 || connect(client_fd, (struct sockaddr *)&address, sizeof address) != 0) die("connect");
    server_fd = accept4(listener_fd, NULL, NULL, SOCK_CLOEXEC);
    if (server_fd < 0) die("accept");
    event_fd = eventfd(0, EFD_CLOEXEC);
    if (event_fd < 0) die("eventfd");
}

int main(void) {
    // Only stdin, stdout and stderr come from the launcher, so descriptor numbers are the same every run.
    syscall(SYS_close_range, 3, ~0U, 0);
    // SIGTERM and SIGINT are taken by sigwait in the main thread; every thread inherits the mask.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    open_data_file();
    open_sockets();
    anon_memory = mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon_memory == MAP_FAILED) die("mmap anonymous");
    memset(anon_memory, 0x42, ANON_SIZE);

    start_thread("demo-ticker", ticker_main);
    start_thread("demo-net", net_main);
    start_thread("demo-pipe", pipe_main);
    start_thread("demo-events", events_main);
    start_thread("demo-stdin", stdin_main);

    struct sockaddr_in address;
    socklen_t length = sizeof address;
    getsockname(listener_fd, (struct sockaddr *)&address, &length);
    printf("READY pid=%d file=%s file_fd=%d offset=%d pipe=%d,%d socketpair=%d,%d listener=%d port=%d "
           "client=%d server=%d eventfd=%d anon=0x%lx anon_size=%d file_map=0x%lx\n",
           getpid(), data_path, data_fd, FILE_OFFSET, pipe_fds[0], pipe_fds[1], pair_fds[0], pair_fds[1],
           listener_fd, ntohs(address.sin_port), client_fd, server_fd, event_fd,
           (unsigned long)(uintptr_t)anon_memory, ANON_SIZE, (unsigned long)(uintptr_t)file_counter);
    fflush(stdout);

    int signal;
    sigwait(&stop_signals, &signal);
    unlink(data_path);
    return 0;
}
