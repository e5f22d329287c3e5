// TCP repair mode (Linux 3.5+, TCP_REPAIR_WINDOW 4.8+): the socket options and ioctls a
// checkpoint uses to read an established connection's state and a restore to rebuild it without a
// handshake. Defined here by number so that the kernel ABI, not a libc header, decides them.
#ifndef MITOSIS_TCP_H
#define MITOSIS_TCP_H
#include <stdint.h>

static const int MITOSIS_SOL_TCP = 6;
static const int MITOSIS_TCP_NODELAY = 1;
static const int MITOSIS_TCP_MAXSEG = 2;
static const int MITOSIS_TCP_CORK = 3;
static const int MITOSIS_TCP_KEEPIDLE = 4;
static const int MITOSIS_TCP_KEEPINTVL = 5;
static const int MITOSIS_TCP_KEEPCNT = 6;
static const int MITOSIS_TCP_INFO = 11;
static const int MITOSIS_TCP_REPAIR = 19;
static const int MITOSIS_TCP_REPAIR_QUEUE = 20;
static const int MITOSIS_TCP_QUEUE_SEQ = 21;
static const int MITOSIS_TCP_REPAIR_OPTIONS = 22;
static const int MITOSIS_TCP_TIMESTAMP = 24;
static const int MITOSIS_TCP_REPAIR_WINDOW = 29;

/// `TCP_REPAIR` values: on, off (sends a window probe), off without the probe.
static const int MITOSIS_TCP_REPAIR_ON = 1;
static const int MITOSIS_TCP_REPAIR_OFF = 0;
static const int MITOSIS_TCP_REPAIR_OFF_NO_WP = -1;

/// `TCP_REPAIR_OPTIONS` codes (TCPOPT_*) and `tcp_info.tcpi_options` bits (TCPI_OPT_*).
static const uint32_t MITOSIS_TCPOPT_MAXSEG = 2;
static const uint32_t MITOSIS_TCPOPT_WINDOW = 3;
static const uint32_t MITOSIS_TCPOPT_SACK_PERM = 4;
static const uint32_t MITOSIS_TCPOPT_TIMESTAMP = 8;
static const uint8_t MITOSIS_TCPI_OPT_TIMESTAMPS = 1;
static const uint8_t MITOSIS_TCPI_OPT_SACK = 2;
static const uint8_t MITOSIS_TCPI_OPT_WSCALE = 4;

/// Socket ioctls: unread bytes (SIOCINQ), unacknowledged + unsent bytes (SIOCOUTQ), unsent bytes (SIOCOUTQNSD).
static const unsigned long MITOSIS_SIOCINQ = 0x541B;
static const unsigned long MITOSIS_SIOCOUTQ = 0x5411;
static const unsigned long MITOSIS_SIOCOUTQNSD = 0x894B;

/// The kernel's `struct tcp_repair_window`.
typedef struct mitosis_tcp_repair_window {
    uint32_t snd_wl1;
    uint32_t snd_wnd;
    uint32_t max_window;
    uint32_t rcv_wnd;
    uint32_t rcv_wup;
} mitosis_tcp_repair_window;

/// The kernel's `struct tcp_repair_opt`.
typedef struct mitosis_tcp_repair_opt {
    uint32_t opt_code;
    uint32_t opt_val;
} mitosis_tcp_repair_opt;

/// The first bytes of the kernel's `struct tcp_info` that repair needs (state, options and the
/// window-scale bit fields: send in the low nibble of byte 6, receive in the high one).
typedef struct mitosis_tcp_info_head {
    uint8_t state;
    uint8_t ca_state;
    uint8_t retransmits;
    uint8_t probes;
    uint8_t backoff;
    uint8_t options;
    uint8_t wscales;
    uint8_t flags;
} mitosis_tcp_info_head;

/// `ioctl(fd, request, &value)` for the int-valued socket ioctls above (ioctl is variadic:
/// Swift cannot call it). 0 or -1 with errno.
int mitosis_ioctl_int(int fd, unsigned long request, int *value);
/// `fcntl(fd, F_GETFL)` and `fcntl(fd, F_SETFL, flags)` (variadic too).
int mitosis_fcntl_getfl(int fd);
int mitosis_fcntl_setfl(int fd, int flags);

#endif
