// libunwind-ptrace and libelf entry points for Swift. The unw_* names are macros and
// &_UPT_accessors is a mutable global that Swift 6 rejects, so both are reached through C.
#ifndef CMITOSIS_STACKS_H
#define CMITOSIS_STACKS_H
#endif
