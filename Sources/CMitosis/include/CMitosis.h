// Umbrella header: one header per kernel area, each owned by the part of Mitosis that uses it.
#ifndef CMITOSIS_H
#define CMITOSIS_H
#include "mitosis_ptrace.h"
#include "mitosis_process.h"
#include "mitosis_netlink.h"
#include "mitosis_memory.h"
#include "mitosis_procfs.h"
#include "mitosis_injection.h"
#include "mitosis_check.h"
#include "mitosis_threads.h"
#include "mitosis_restore.h"
#include "mitosis_tcp.h"
#include "mitosis_unix.h"
#include "mitosis_fditer.h"
#include "mitosis_xxh64.h"
#include "mitosis_zstd.h"
#endif
