// NETLINK_SOCK_DIAG requests, built in C because Swift does not guarantee struct layout.
#ifndef MITOSIS_NETLINK_H
#define MITOSIS_NETLINK_H
#endif
