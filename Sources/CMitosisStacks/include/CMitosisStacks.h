// libunwind-ptrace and libelf entry points for Swift. The unw_* names are macros and
// &_UPT_accessors is a mutable global that Swift 6 rejects, so both are reached through C;
// the ELF symbol tables stay in C memory so that only the names Swift asks for become Strings.
#ifndef CMITOSIS_STACKS_H
#define CMITOSIS_STACKS_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// MARK: Unwinding

/// One unwinding session over one frozen process: a libunwind address space whose caches
/// (unwind tables, register-state cache) serve every thread, and a page cache of its memory.
typedef struct mitosis_unwinder mitosis_unwinder;

/// Why an unwind ended.
enum {
    MITOSIS_UNWIND_END = 0,         ///< reached the outermost frame
    MITOSIS_UNWIND_MAX_FRAMES = 1,  ///< the caller's frame limit
    MITOSIS_UNWIND_ERROR = 2,       ///< libunwind could not step further (error holds its code)
    MITOSIS_UNWIND_LOOP = 3,        ///< the stack repeats itself or runs backwards: corrupt
    MITOSIS_UNWIND_INIT_FAILED = 4, ///< the registers could not be read (error holds the code)
};

/// Creates a session for process `pid`; NULL when libunwind cannot.
mitosis_unwinder *mitosis_unwinder_create(pid_t pid);
void mitosis_unwinder_destroy(mitosis_unwinder *unwinder);

/// Unwinds thread `tid`, which the calling thread must hold in a ptrace-stop. Stores up to
/// `max` program counters; `signal_frame[i]` is 1 when frame i is a signal trampoline (so frame
/// i + 1 holds an exact interrupted pc rather than a return address). Returns the frame count;
/// `*reason` is one of MITOSIS_UNWIND_* and `*error` the negative libunwind code, if any.
int mitosis_unwind(mitosis_unwinder *unwinder, pid_t tid, uint64_t *pcs, uint8_t *signal_frame,
                   int max, int *reason, int *error);

/// libunwind's text for an error code.
const char *mitosis_unwind_strerror(int error);

// MARK: ELF symbols

/// A function symbol: [address, address + size) in the file's virtual addresses.
typedef struct mitosis_elf_symbol {
    uint64_t address;
    uint64_t size;
    const char *name;
    uint8_t binding;  ///< STB_LOCAL 0, STB_GLOBAL 1, STB_WEAK 2
} mitosis_elf_symbol;

/// A PT_LOAD segment: file bytes [offset, offset + file_size) load at vaddr.
typedef struct mitosis_elf_segment {
    uint64_t offset;
    uint64_t vaddr;
    uint64_t file_size;
} mitosis_elf_segment;

/// The parts of one ELF file that symbolization needs. Owns its memory.
typedef struct mitosis_elf_module {
    int symbol_count;
    mitosis_elf_symbol *symbols;  ///< sorted by address
    int from_dynsym;              ///< 1 when the file has no .symtab and .dynsym was used
    int segment_count;
    mitosis_elf_segment *segments;
    int build_id_size;
    uint8_t build_id[64];
    char *strings;                ///< the names' storage
} mitosis_elf_module;

/// Reads the function symbols, PT_LOAD segments and build-id of the ELF file open at `fd`.
/// Returns NULL (and sets *error to libelf's message) when it is not a readable ELF file.
mitosis_elf_module *mitosis_elf_load(int fd, const char **error);
/// Reads an ELF image held in memory (e.g. the vDSO copied out of a process).
mitosis_elf_module *mitosis_elf_load_memory(const void *image, size_t size, const char **error);
void mitosis_elf_free(mitosis_elf_module *module);
/// The symbol containing `address`, or NULL. Of several at one address it prefers a global
/// symbol over a weak one over a local one.
const mitosis_elf_symbol *mitosis_elf_lookup(const mitosis_elf_module *module, uint64_t address);

// MARK: Demangling

/// A C++ (Itanium ABI) name demangled by libstdc++, malloc'ed; NULL if `name` is not one.
char *mitosis_demangle_cxx(const char *name);
/// A Swift name demangled by the Swift runtime, malloc'ed; NULL if `name` is not one.
char *mitosis_demangle_swift(const char *name);

#endif
