#define _GNU_SOURCE
#include "CMitosisStacks.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <libunwind-ptrace.h>
#include <gelf.h>

// MARK: Unwinding

enum { PAGE = 4096, CACHE_PAGES = 64 };

typedef struct cached_page {
    uint64_t base;  ///< page address + 1 (0: empty slot)
    int readable;
    uint8_t bytes[PAGE];
} cached_page;

struct mitosis_unwinder {
    pid_t pid;
    unw_addr_space_t space;
    cached_page cache[CACHE_PAGES];
};

/// The session of the unwind running on this thread. libunwind passes every accessor the _UPT
/// state of the thread being walked — and the _UPT functions pass that same pointer on to
/// access_mem — so the session cannot travel in the accessor argument.
static __thread mitosis_unwinder *current;

/// Reads target memory a page at a time with process_vm_readv and keeps the page: one system
/// call per stack page instead of one PTRACE_PEEKDATA per word. The process is frozen, so the
/// pages cannot change during the session.
static int read_word(mitosis_unwinder *unwinder, unw_word_t address, unw_word_t *value) {
    if (address & 7) {
        // libunwind asks for aligned words; anything else comes from a corrupt frame.
        return -UNW_EINVAL;
    }
    uint64_t base = address & ~(uint64_t)(PAGE - 1);
    cached_page *page = &unwinder->cache[(base / PAGE) % CACHE_PAGES];
    if (page->base != base + 1) {
        struct iovec local = { page->bytes, PAGE }, remote = { (void *)base, PAGE };
        page->base = base + 1;
        page->readable = process_vm_readv(unwinder->pid, &local, 1, &remote, 1, 0) == PAGE;
    }
    if (!page->readable) return -UNW_EINVAL;
    memcpy(value, page->bytes + (address - base), sizeof *value);
    return 0;
}

static int access_mem(unw_addr_space_t space, unw_word_t address, unw_word_t *value, int write, void *arg) {
    (void)space; (void)arg;
    if (write) return -UNW_EINVAL;  // never change the target
    return read_word(current, address, value);
}

static int access_reg(unw_addr_space_t space, unw_regnum_t reg, unw_word_t *value, int write, void *arg) {
    if (write) return -UNW_EREADONLYREG;
    return _UPT_access_reg(space, reg, value, 0, arg);
}

static int access_fpreg(unw_addr_space_t space, unw_regnum_t reg, unw_fpreg_t *value, int write, void *arg) {
    if (write) return -UNW_EREADONLYREG;
    return _UPT_access_fpreg(space, reg, value, 0, arg);
}

static int resume(unw_addr_space_t space, unw_cursor_t *cursor, void *arg) {
    (void)space; (void)cursor; (void)arg;
    return -UNW_EINVAL;  // never resume the target from here
}

mitosis_unwinder *mitosis_unwinder_create(pid_t pid) {
    mitosis_unwinder *unwinder = calloc(1, sizeof *unwinder);
    if (!unwinder) return NULL;
    unw_accessors_t accessors = {
        .find_proc_info = _UPT_find_proc_info,
        .put_unwind_info = _UPT_put_unwind_info,
        .get_dyn_info_list_addr = _UPT_get_dyn_info_list_addr,
        .access_mem = access_mem,
        .access_reg = access_reg,
        .access_fpreg = access_fpreg,
        .resume = resume,
    };
    unwinder->pid = pid;
    unwinder->space = unw_create_addr_space(&accessors, 0);
    if (!unwinder->space) { free(unwinder); return NULL; }
    unw_set_caching_policy(unwinder->space, UNW_CACHE_GLOBAL);
    return unwinder;
}

void mitosis_unwinder_destroy(mitosis_unwinder *unwinder) {
    if (!unwinder) return;
    unw_destroy_addr_space(unwinder->space);
    free(unwinder);
}

int mitosis_unwind(mitosis_unwinder *unwinder, pid_t tid, uint64_t *pcs, uint8_t *signal_frame,
                   int max, int *reason, int *error) {
    *error = 0;
    void *upt = _UPT_create(tid);
    if (!upt) { *reason = MITOSIS_UNWIND_INIT_FAILED; *error = -UNW_ENOMEM; return 0; }
    unw_cursor_t cursor;
    current = unwinder;
    int count = 0, rc = unw_init_remote(&cursor, unwinder->space, upt);
    if (rc < 0) {
        *reason = MITOSIS_UNWIND_INIT_FAILED;
        *error = rc;
    } else {
        unw_word_t previous_sp = 0;
        int previous_was_signal = 0;
        *reason = MITOSIS_UNWIND_MAX_FRAMES;
        while (count < max) {
            unw_word_t pc = 0, sp = 0;
            if ((rc = unw_get_reg(&cursor, UNW_REG_IP, &pc)) < 0 || (rc = unw_get_reg(&cursor, UNW_REG_SP, &sp)) < 0) {
                *reason = MITOSIS_UNWIND_ERROR; *error = rc; break;
            }
            if (pc == 0) { *reason = MITOSIS_UNWIND_END; break; }
            // A caller's frame sits strictly above its callee's (at least the return address
            // lies between them); only a signal frame may switch to another stack.
            if (count > 0 && !previous_was_signal && sp <= previous_sp) {
                *reason = MITOSIS_UNWIND_LOOP; break;
            }
            previous_was_signal = unw_is_signal_frame(&cursor) > 0;
            pcs[count] = pc;
            signal_frame[count] = (uint8_t)previous_was_signal;
            count++;
            previous_sp = sp;
            rc = unw_step(&cursor);
            if (rc == 0) { *reason = MITOSIS_UNWIND_END; break; }
            if (rc < 0) { *reason = MITOSIS_UNWIND_ERROR; *error = rc; break; }
        }
    }
    _UPT_destroy(upt);
    current = NULL;
    return count;
}

const char *mitosis_unwind_strerror(int error) { return unw_strerror(error); }

// MARK: ELF symbols

static int compare_symbols(const void *a, const void *b) {
    const mitosis_elf_symbol *x = a, *y = b;
    if (x->address != y->address) return x->address < y->address ? -1 : 1;
    // At one address: global, then weak, then local; sized before unsized.
    static const int rank[] = { 2, 0, 1 };
    int rx = x->binding < 3 ? rank[x->binding] : 3, ry = y->binding < 3 ? rank[y->binding] : 3;
    if (rx != ry) return rx - ry;
    return (x->size == 0) - (y->size == 0);
}

/// Symbols of `section` (SHT_SYMTAB or SHT_DYNSYM) that are defined functions.
static int collect_symbols(Elf *elf, Elf_Scn *section, GElf_Shdr *header, mitosis_elf_module *module) {
    Elf_Data *data = elf_getdata(section, NULL);
    if (!data || header->sh_entsize == 0) return 0;
    size_t total = header->sh_size / header->sh_entsize, names_size = 0, kept = 0;
    mitosis_elf_symbol *symbols = calloc(total ? total : 1, sizeof *symbols);
    if (!symbols) return -1;
    for (size_t i = 0; i < total; i++) {
        GElf_Sym symbol;
        if (!gelf_getsym(data, (int)i, &symbol)) continue;
        int type = GELF_ST_TYPE(symbol.st_info);
        if ((type != STT_FUNC && type != STT_GNU_IFUNC) || symbol.st_shndx == SHN_UNDEF || symbol.st_value == 0) continue;
        const char *name = elf_strptr(elf, header->sh_link, symbol.st_name);
        if (!name || !*name) continue;
        symbols[kept] = (mitosis_elf_symbol){ symbol.st_value, symbol.st_size, name, (uint8_t)GELF_ST_BIND(symbol.st_info) };
        names_size += strlen(name) + 1;
        kept++;
    }
    // Copy the names out of libelf's memory so that the module outlives the Elf handle.
    char *strings = malloc(names_size ? names_size : 1), *cursor = strings;
    if (!strings) { free(symbols); return -1; }
    for (size_t i = 0; i < kept; i++) {
        size_t length = strlen(symbols[i].name) + 1;
        memcpy(cursor, symbols[i].name, length);
        symbols[i].name = cursor;
        cursor += length;
    }
    qsort(symbols, kept, sizeof *symbols, compare_symbols);
    module->symbols = symbols;
    module->symbol_count = (int)kept;
    module->strings = strings;
    return 0;
}

static void read_build_id(Elf_Data *data, mitosis_elf_module *module) {
    size_t offset = 0, name_offset, desc_offset;
    GElf_Nhdr note;
    while ((offset = gelf_getnote(data, offset, &note, &name_offset, &desc_offset)) > 0) {
        if (note.n_type == NT_GNU_BUILD_ID && note.n_namesz == 4 && memcmp((char *)data->d_buf + name_offset, "GNU", 4) == 0
            && note.n_descsz <= sizeof module->build_id) {
            memcpy(module->build_id, (char *)data->d_buf + desc_offset, note.n_descsz);
            module->build_id_size = (int)note.n_descsz;
            return;
        }
    }
}

static mitosis_elf_module *load(Elf *elf, const char **error) {
    mitosis_elf_module *module = calloc(1, sizeof *module);
    size_t segments = 0;
    if (!module || elf_kind(elf) != ELF_K_ELF || elf_getphdrnum(elf, &segments) != 0) goto fail;
    module->segments = calloc(segments ? segments : 1, sizeof *module->segments);
    if (!module->segments) goto fail;
    for (size_t i = 0; i < segments; i++) {
        GElf_Phdr header;
        if (!gelf_getphdr(elf, (int)i, &header)) continue;
        if (header.p_type == PT_LOAD) {
            module->segments[module->segment_count++] = (mitosis_elf_segment){ header.p_offset, header.p_vaddr, header.p_filesz };
        } else if (header.p_type == PT_NOTE && module->build_id_size == 0) {
            Elf_Data *data = elf_getdata_rawchunk(elf, (int64_t)header.p_offset, header.p_filesz, ELF_T_NHDR);
            if (data) read_build_id(data, module);
        }
    }
    Elf_Scn *symtab = NULL, *dynsym = NULL, *section = NULL;
    GElf_Shdr symtab_header, dynsym_header, header;
    while ((section = elf_nextscn(elf, section))) {
        if (!gelf_getshdr(section, &header)) continue;
        if (header.sh_type == SHT_SYMTAB) { symtab = section; symtab_header = header; }
        if (header.sh_type == SHT_DYNSYM) { dynsym = section; dynsym_header = header; }
    }
    int rc = 0;
    if (symtab) rc = collect_symbols(elf, symtab, &symtab_header, module);
    else if (dynsym) { rc = collect_symbols(elf, dynsym, &dynsym_header, module); module->from_dynsym = 1; }
    if (rc != 0) goto fail;
    elf_end(elf);
    return module;
fail:
    *error = elf_errno() ? elf_errmsg(-1) : "not an ELF file";
    mitosis_elf_free(module);
    elf_end(elf);
    return NULL;
}

mitosis_elf_module *mitosis_elf_load(int fd, const char **error) {
    elf_version(EV_CURRENT);
    Elf *elf = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    if (!elf) { *error = elf_errmsg(-1); return NULL; }
    return load(elf, error);
}

mitosis_elf_module *mitosis_elf_load_memory(const void *image, size_t size, const char **error) {
    elf_version(EV_CURRENT);
    Elf *elf = elf_memory((char *)image, size);
    if (!elf) { *error = elf_errmsg(-1); return NULL; }
    return load(elf, error);
}

void mitosis_elf_free(mitosis_elf_module *module) {
    if (!module) return;
    free(module->symbols);
    free(module->segments);
    free(module->strings);
    free(module);
}

const mitosis_elf_symbol *mitosis_elf_lookup(const mitosis_elf_module *module, uint64_t address) {
    // The last symbol starting at or below `address`, then back to the first of its address
    // (the preferred one of any aliases).
    int low = 0, high = module->symbol_count;
    while (low < high) {
        int middle = low + (high - low) / 2;
        if (module->symbols[middle].address <= address) low = middle + 1; else high = middle;
    }
    if (low == 0) return NULL;
    int index = low - 1;
    while (index > 0 && module->symbols[index - 1].address == module->symbols[index].address) index--;
    // Prefer a sized symbol that covers the address; an unsized one only as the nearest guess
    // when nothing sized starts there.
    for (int i = index; i < module->symbol_count && module->symbols[i].address == module->symbols[index].address; i++) {
        const mitosis_elf_symbol *symbol = &module->symbols[i];
        if (symbol->size > 0 && address < symbol->address + symbol->size) return symbol;
    }
    return module->symbols[index].size == 0 ? &module->symbols[index] : NULL;
}

// MARK: Demangling

extern char *__cxa_demangle(const char *mangled, char *buffer, size_t *length, int *status);
extern char *swift_demangle(const char *mangled, size_t length, char *buffer, size_t *buffer_size, uint32_t flags);

char *mitosis_demangle_cxx(const char *name) {
    int status = 0;
    char *result = __cxa_demangle(name, NULL, NULL, &status);
    return status == 0 ? result : NULL;
}

char *mitosis_demangle_swift(const char *name) {
    return swift_demangle(name, strlen(name), NULL, NULL, 0);
}
