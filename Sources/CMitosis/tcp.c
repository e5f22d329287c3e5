#include "mitosis_tcp.h"
#include <fcntl.h>
#include <sys/ioctl.h>

int mitosis_ioctl_int(int fd, unsigned long request, int *value) {
    return ioctl(fd, request, value);
}

int mitosis_fcntl_getfl(int fd) {
    return fcntl(fd, F_GETFL);
}

int mitosis_fcntl_setfl(int fd, int flags) {
    return fcntl(fd, F_SETFL, flags);
}
