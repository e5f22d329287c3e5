// Descriptor and IPC scenarios for the introspection tests.
//
// `fds`: one descriptor of every kind Mitosis classifies, each in a known state, plus a SysV
// segment attached, a mapped file, a semaphore and a message queue; every fd number, inode and
// address is reported. A helper process removes the files and SysV objects when the scenario
// dies (it is killed with SIGKILL, so it cannot clean up itself).
// `zombie`: a child that exited and is never reaped (reports `zombie=PID`).
// `manyfds N`: N descriptors of mixed kinds (files, pipes, eventfds, socketpairs, /dev/null).
#define _GNU_SOURCE
#include "scenario.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>

static char directory[64];
static int semaphore_id = -1, queue_id = -1;

static unsigned long inode_of(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) scenario_fail("fstat %d", fd);
    return (unsigned long)st.st_ino;
}

static void report_fd(const char *name, int fd) {
    if (fd < 0) scenario_fail("creating %s failed", name);
    char key[64];
    scenario_report(name, "%d", fd);
    snprintf(key, sizeof key, "%s_ino", name);
    scenario_report(key, "%lu", inode_of(fd));
}

static int open_in_directory(const char *name, int flags) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    return open(path, flags, 0600);
}

static const char *const file_names[] = {"data.bin", "with space.txt", "gone.txt", "mapped.bin", "fifo", "many.bin"};

/// Forks a process that waits for this one to die, then removes the directory and SysV objects.
static void spawn_cleaner(void) {
    int link[2];
    if (pipe2(link, O_CLOEXEC) != 0) scenario_fail("pipe2");
    pid_t pid = fork();
    if (pid < 0) scenario_fail("fork");
    if (pid == 0) {
        close(link[1]);
        // Hold nothing of the scenario's but the read end: its descriptors must stay its own.
        dup2(link[0], 0);
        syscall(SYS_close_range, 1, ~0U, 0);
        setsid();
        char byte;
        while (read(0, &byte, 1) > 0) {}
        for (size_t i = 0; i < sizeof file_names / sizeof *file_names; i++) {
            char path[256];
            snprintf(path, sizeof path, "%s/%s", directory, file_names[i]);
            unlink(path);
        }
        rmdir(directory);
        if (semaphore_id >= 0) semctl(semaphore_id, 0, IPC_RMID);
        if (queue_id >= 0) msgctl(queue_id, IPC_RMID, NULL);
        _exit(0);
    }
    close(link[0]);  // the write end stays open in the scenario until it dies
}

static int fds_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    strcpy(directory, "/tmp/mitosis-fds-XXXXXX");
    if (!mkdtemp(directory)) scenario_fail("mkdtemp");
    scenario_report("dir", "%s", directory);

    // SysV objects first, so that the cleaner knows their ids.
    semaphore_id = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
    queue_id = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    if (semaphore_id < 0 || queue_id < 0) scenario_fail("semget/msgget");
    spawn_cleaner();
    struct sembuf up = {.sem_num = 1, .sem_op = 3, .sem_flg = 0};
    if (semop(semaphore_id, &up, 1) != 0) scenario_fail("semop");
    struct { long type; char text[5]; } message = {1, "hello"};
    if (msgsnd(queue_id, &message, 5, 0) != 0) scenario_fail("msgsnd");
    scenario_report("semid", "%d", semaphore_id);
    scenario_report("msqid", "%d", queue_id);

    // A regular file of 10000 bytes, positioned at 1234.
    int file = open_in_directory("data.bin", O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC);
    char block[10000];
    memset(block, 'x', sizeof block);
    if (write(file, block, sizeof block) != (ssize_t)sizeof block || lseek(file, 1234, SEEK_SET) != 1234) scenario_fail("file");
    report_fd("file", file);

    report_fd("dir_fd", open(directory, O_RDONLY | O_DIRECTORY));

    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) scenario_fail("pipe");
    report_fd("pipe_r", pipe_fds[0]);
    report_fd("pipe_w", pipe_fds[1]);

    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) scenario_fail("socketpair");
    report_fd("sp0", pair[0]);
    report_fd("sp1", pair[1]);

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4) != 0 ||
        getsockname(listener, (struct sockaddr *)&address, &length) != 0) scenario_fail("listen");
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(client, (struct sockaddr *)&address, sizeof address) != 0) scenario_fail("connect");
    int accepted = accept(listener, NULL, NULL);
    report_fd("listener", listener);
    report_fd("client", client);
    report_fd("accepted", accepted);
    scenario_report("port", "%d", ntohs(address.sin_port));

    int event = eventfd(42, EFD_CLOEXEC | EFD_NONBLOCK);
    uint64_t add = 100;
    if (write(event, &add, sizeof add) != sizeof add) scenario_fail("eventfd write");
    report_fd("eventfd", event);

    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event in = {.events = EPOLLIN, .data.u64 = 0x1111};
    struct epoll_event both = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.u64 = 0x2222};
    if (epoll_ctl(epoll, EPOLL_CTL_ADD, pipe_fds[0], &in) != 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, pair[0], &both) != 0)
        scenario_fail("epoll_ctl");
    report_fd("epoll", epoll);

    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec period = {.it_interval = {3, 250000000}, .it_value = {100, 0}};
    if (timerfd_settime(timer, 0, &period, NULL) != 0) scenario_fail("timerfd_settime");
    report_fd("timerfd", timer);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    report_fd("signalfd", signalfd(-1, &mask, SFD_CLOEXEC));

    int notify = inotify_init1(IN_CLOEXEC);
    int watch = inotify_add_watch(notify, directory, IN_CREATE | IN_DELETE);
    if (watch < 0) scenario_fail("inotify_add_watch");
    report_fd("inotify", notify);
    scenario_report("inotify_wd", "%d", watch);

    int memory = memfd_create("mitosis scratch", MFD_CLOEXEC);
    if (ftruncate(memory, 8192) != 0) scenario_fail("ftruncate memfd");
    report_fd("memfd", memory);

    report_fd("pidfd", (int)syscall(SYS_pidfd_open, getpid(), 0));

    int segment = shmget(IPC_PRIVATE, 16384, IPC_CREAT | 0600);
    void *attached = shmat(segment, NULL, 0);
    if (segment < 0 || attached == (void *)-1) scenario_fail("shm");
    ((char *)attached)[0] = 1;
    shmctl(segment, IPC_RMID, NULL);  // destroyed when the scenario dies and detaches
    scenario_report("shmid", "%d", segment);
    scenario_report("shm_addr", "%lu", (unsigned long)attached);

    // A file mapped shared, read-only, from offset 4096 for 8192 bytes.
    int mapped = open_in_directory("mapped.bin", O_RDWR | O_CREAT);
    if (ftruncate(mapped, 3 * 4096) != 0) scenario_fail("ftruncate");
    void *address_mapped = mmap(NULL, 8192, PROT_READ, MAP_SHARED, mapped, 4096);
    if (address_mapped == MAP_FAILED) scenario_fail("mmap");
    scenario_report("map_addr", "%lu", (unsigned long)address_mapped);
    scenario_report("map_ino", "%lu", inode_of(mapped));
    close(mapped);

    int gone = open_in_directory("gone.txt", O_RDWR | O_CREAT);
    char path[256];
    snprintf(path, sizeof path, "%s/gone.txt", directory);
    if (unlink(path) != 0) scenario_fail("unlink");
    report_fd("deleted", gone);

    report_fd("spaced", open_in_directory("with space.txt", O_WRONLY | O_CREAT | O_TRUNC));

    snprintf(path, sizeof path, "%s/fifo", directory);
    if (mkfifo(path, 0600) != 0) scenario_fail("mkfifo");
    report_fd("fifo", open(path, O_RDWR | O_NONBLOCK));

    char queue_name[64];
    snprintf(queue_name, sizeof queue_name, "/mitosis-fds-%d", getpid());
    struct mq_attr attributes = {.mq_maxmsg = 4, .mq_msgsize = 64};
    mqd_t queue = mq_open(queue_name, O_CREAT | O_RDWR | O_CLOEXEC, 0600, &attributes);
    if (queue < 0) scenario_fail("mq_open");
    mq_unlink(queue_name);  // the descriptor keeps it alive; nothing to clean up
    report_fd("mqueue", queue);

    report_fd("ptmx", posix_openpt(O_RDWR | O_NOCTTY));
    report_fd("null", open("/dev/null", O_WRONLY));
    return 0;
}
SCENARIO(fds, fds_setup, NULL)

static int zombie_setup(int argc, char **argv) {
    (void)argc; (void)argv;
    pid_t child = fork();
    if (child < 0) scenario_fail("fork");
    if (child == 0) _exit(0);
    // Wait until it is a zombie; never reap it.
    siginfo_t info;
    if (waitid(P_PID, child, &info, WEXITED | WNOWAIT) != 0) scenario_fail("waitid");
    scenario_report("zombie", "%d", child);
    return 0;
}
SCENARIO(zombie, zombie_setup, NULL)

/// `manyfds N`: N descriptors cycling through five kinds.
static int manyfds_setup(int argc, char **argv) {
    int count = argc > 0 ? atoi(argv[0]) : 1000;
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    if (limit.rlim_cur < (rlim_t)count + 64) {
        limit.rlim_cur = (rlim_t)count + 64;
        if (limit.rlim_max < limit.rlim_cur) limit.rlim_max = limit.rlim_cur;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) scenario_fail("setrlimit");
    }
    strcpy(directory, "/tmp/mitosis-manyfds-XXXXXX");
    if (!mkdtemp(directory)) scenario_fail("mkdtemp");
    spawn_cleaner();
    int opened = 0;
    for (int i = 0; opened < count; i++) {
        int pair[2];
        switch (i % 5) {
        case 0:
            if (open_in_directory("many.bin", O_RDWR | O_CREAT) < 0) scenario_fail("open");
            opened += 1;
            break;
        case 1:
            if (count - opened < 2 || pipe(pair) != 0) continue;
            opened += 2;
            break;
        case 2:
            if (eventfd((unsigned)i, 0) < 0) scenario_fail("eventfd");
            opened += 1;
            break;
        case 3:
            if (count - opened < 2 || socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) continue;
            opened += 2;
            break;
        default:
            if (open("/dev/null", O_RDONLY) < 0) scenario_fail("open /dev/null");
            opened += 1;
        }
    }
    scenario_report("opened", "%d", opened);
    return 0;
}
SCENARIO(manyfds, manyfds_setup, NULL)
