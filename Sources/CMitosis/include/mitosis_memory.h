// Page tracking ABI: userfaultfd write-protect and PAGEMAP_SCAN, defined here when Debian 12's
// 6.1 headers lack them (guarded, so newer headers win).
#ifndef MITOSIS_MEMORY_H
#define MITOSIS_MEMORY_H
#endif
