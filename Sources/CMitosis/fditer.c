#include "mitosis_fditer.h"
#include <errno.h>
#include <linux/bpf.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
#define LOAD(size, dst, src, off) INSN(BPF_LDX | BPF_MEM | (size), dst, src, off, 0)
#define STORE(size, dst, off, src) INSN(BPF_STX | BPF_MEM | (size), dst, src, off, 0)
#define STORE_IMM(size, dst, off, imm) INSN(BPF_ST | BPF_MEM | (size), dst, 0, off, imm)
#define MOV(dst, src) INSN(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
#define MOV_IMM(dst, imm) INSN(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
#define ALU_IMM(op, dst, imm) INSN(BPF_ALU64 | (op) | BPF_K, dst, 0, 0, imm)
#define ALU(op, dst, src) INSN(BPF_ALU64 | (op) | BPF_X, dst, src, 0, 0)
#define JUMP_IMM(op, dst, imm, off) INSN(BPF_JMP | (op) | BPF_K, dst, 0, off, imm)
#define CALL(helper) INSN(BPF_JMP | BPF_CALL, 0, 0, 0, helper)
#define EXIT INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
/// A jump to the program's end, patched once the program is complete.
#define TO_END 0x7fff

static long bpf(int command, union bpf_attr *attr) { return syscall(SYS_bpf, command, attr, sizeof(*attr)); }

int mitosis_fd_iterator_open(const struct mitosis_fd_offsets *o, int tid, char *log, uint32_t log_size) {
    enum { header = sizeof(struct mitosis_fd_record), path_max = 4096, anon_inode_magic = 0x09041934 };
    int eventfd = o->file_private_data >= 0 && o->eventfd_count >= 0 && o->eventfd_id >= 0 && o->eventfd_flags >= 0;
    // Without the offsets the eventfd block is never run, but the verifier still checks its loads.
    int32_t private_data = eventfd ? o->file_private_data : o->file_pos;
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    // One scratch record + path per CPU: the BPF stack (512 bytes) cannot hold a path.
    attr.map_type = BPF_MAP_TYPE_PERCPU_ARRAY;
    attr.key_size = 4;
    attr.value_size = header + path_max;
    attr.max_entries = 1;
    int map = (int)bpf(BPF_MAP_CREATE, &attr);
    if (map < 0) return -errno;

    // r6 ctx, r7 file, r8 meta, r9 the record (map value).
    struct bpf_insn program[] = {
        MOV(6, 1),
        LOAD(BPF_DW, 7, 6, o->ctx_file),
        JUMP_IMM(BPF_JEQ, 7, 0, TO_END),
        LOAD(BPF_DW, 8, 6, o->ctx_meta),
        STORE_IMM(BPF_W, 10, -4, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map), INSN(0, 0, 0, 0, 0),
        MOV(2, 10), ALU_IMM(BPF_ADD, 2, -4),
        CALL(BPF_FUNC_map_lookup_elem),
        JUMP_IMM(BPF_JEQ, 0, 0, TO_END),
        MOV(9, 0),
        LOAD(BPF_W, 1, 6, o->ctx_fd), STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, fd), 1),
        LOAD(BPF_W, 1, 7, o->file_flags), STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, flags), 1),
        LOAD(BPF_DW, 1, 7, o->file_pos), STORE(BPF_DW, 9, offsetof(struct mitosis_fd_record, position), 1),
        LOAD(BPF_DW, 2, 7, o->file_inode),
        LOAD(BPF_DW, 1, 2, o->inode_ino), STORE(BPF_DW, 9, offsetof(struct mitosis_fd_record, inode), 1),
        LOAD(BPF_H, 1, 2, o->inode_mode), STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, mode), 1),
        LOAD(BPF_W, 1, 2, o->inode_rdev), STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, special_device), 1),
        LOAD(BPF_DW, 3, 2, o->inode_sb),
        LOAD(BPF_W, 1, 3, o->sb_dev), STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, device), 1),
        LOAD(BPF_DW, 1, 3, o->sb_magic), STORE(BPF_DW, 9, offsetof(struct mitosis_fd_record, magic), 1),
        STORE(BPF_DW, 9, offsetof(struct mitosis_fd_record, file), 7),
        // mount_id: struct mount holds the vfsmount at mount_mnt; read it as plain memory.
        STORE_IMM(BPF_W, 9, offsetof(struct mitosis_fd_record, mount_id), 0),
        LOAD(BPF_DW, 3, 7, o->file_path + o->path_mnt), ALU_IMM(BPF_ADD, 3, o->mount_id - o->mount_mnt),
        MOV(1, 9), ALU_IMM(BPF_ADD, 1, offsetof(struct mitosis_fd_record, mount_id)), MOV_IMM(2, 4),
        CALL(BPF_FUNC_probe_read_kernel),
        // An eventfd's state (fdinfo's eventfd-count, -id, -semaphore), read from private_data
        // for files on the anonymous-inode filesystem; left at id -1 without the BTF offsets.
        STORE_IMM(BPF_DW, 9, offsetof(struct mitosis_fd_record, eventfd_count), 0),
        STORE_IMM(BPF_W, 9, offsetof(struct mitosis_fd_record, eventfd_id), -1),
        STORE_IMM(BPF_W, 9, offsetof(struct mitosis_fd_record, eventfd_flags), 0),
        LOAD(BPF_DW, 1, 9, offsetof(struct mitosis_fd_record, magic)),
        JUMP_IMM(BPF_JNE, 1, eventfd ? anon_inode_magic : 0, 20),
        LOAD(BPF_DW, 3, 7, private_data), ALU_IMM(BPF_ADD, 3, o->eventfd_count),
        MOV(1, 9), ALU_IMM(BPF_ADD, 1, offsetof(struct mitosis_fd_record, eventfd_count)), MOV_IMM(2, 8),
        CALL(BPF_FUNC_probe_read_kernel),
        LOAD(BPF_DW, 3, 7, private_data), ALU_IMM(BPF_ADD, 3, o->eventfd_flags),
        MOV(1, 9), ALU_IMM(BPF_ADD, 1, offsetof(struct mitosis_fd_record, eventfd_flags)), MOV_IMM(2, 4),
        CALL(BPF_FUNC_probe_read_kernel),
        LOAD(BPF_DW, 3, 7, private_data), ALU_IMM(BPF_ADD, 3, o->eventfd_id),
        MOV(1, 9), ALU_IMM(BPF_ADD, 1, offsetof(struct mitosis_fd_record, eventfd_id)), MOV_IMM(2, 4),
        CALL(BPF_FUNC_probe_read_kernel),
        JUMP_IMM(BPF_JEQ, 0, 0, 1), STORE_IMM(BPF_W, 9, offsetof(struct mitosis_fd_record, eventfd_id), -1),
        // close_on_exec: bit fd of task->files->fdt->close_on_exec, as fdinfo adds it to flags.
        STORE_IMM(BPF_DW, 10, -16, 0),
        LOAD(BPF_DW, 1, 6, o->ctx_task), JUMP_IMM(BPF_JEQ, 1, 0, TO_END),
        LOAD(BPF_DW, 1, 1, o->task_files), LOAD(BPF_DW, 1, 1, o->files_fdt), LOAD(BPF_DW, 3, 1, o->fdt_close_on_exec),
        LOAD(BPF_W, 2, 6, o->ctx_fd), ALU_IMM(BPF_RSH, 2, 6), ALU_IMM(BPF_LSH, 2, 3), ALU(BPF_ADD, 3, 2),
        MOV(1, 10), ALU_IMM(BPF_ADD, 1, -16), MOV_IMM(2, 8),
        CALL(BPF_FUNC_probe_read_kernel),
        LOAD(BPF_DW, 1, 10, -16), LOAD(BPF_W, 2, 6, o->ctx_fd), ALU_IMM(BPF_AND, 2, 63), ALU(BPF_RSH, 1, 2), ALU_IMM(BPF_AND, 1, 1),
        STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, close_on_exec), 1),
        // The link text, as readlink of /proc/PID/fd/N gives it.
        MOV(1, 7), ALU_IMM(BPF_ADD, 1, o->file_path), MOV(2, 9), ALU_IMM(BPF_ADD, 2, header), MOV_IMM(3, path_max),
        CALL(BPF_FUNC_d_path),
        STORE(BPF_W, 9, offsetof(struct mitosis_fd_record, path_length), 0),
        JUMP_IMM(BPF_JSGT, 0, path_max, 1), JUMP_IMM(BPF_JSGT, 0, 0, 1), MOV_IMM(0, 0),
        MOV(3, 0), ALU_IMM(BPF_ADD, 3, header), LOAD(BPF_DW, 1, 8, o->meta_seq), MOV(2, 9),
        CALL(BPF_FUNC_seq_write),
        MOV_IMM(0, 0), EXIT,
    };
    int count = (int)(sizeof(program) / sizeof(program[0]));
    for (int i = 0; i < count; i++) {
        if ((program[i].code & 0x07) == BPF_JMP && program[i].off == TO_END) program[i].off = (short)(count - 2 - i - 1);
    }
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_TRACING;
    attr.expected_attach_type = BPF_TRACE_ITER;
    attr.attach_btf_id = o->iter_function;
    attr.insns = (uint64_t)(uintptr_t)program;
    attr.insn_cnt = (uint32_t)count;
    attr.license = (uint64_t)(uintptr_t)"GPL";  // bpf_seq_write is GPL-only
    int prog = (int)bpf(BPF_PROG_LOAD, &attr);
    if (prog < 0 && log && log_size > 0) {  // again, for the verifier's reasons
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
        prog = (int)bpf(BPF_PROG_LOAD, &attr);
    }
    int saved = errno;
    close(map);  // the program holds it
    if (prog < 0) return -saved;

    union bpf_iter_link_info info;
    memset(&info, 0, sizeof(info));
    info.task.tid = (uint32_t)tid;
    memset(&attr, 0, sizeof(attr));
    attr.link_create.prog_fd = (uint32_t)prog;
    attr.link_create.attach_type = BPF_TRACE_ITER;
    attr.link_create.iter_info = (uint64_t)(uintptr_t)&info;
    attr.link_create.iter_info_len = sizeof(info);
    int link = (int)bpf(BPF_LINK_CREATE, &attr);
    saved = errno;
    close(prog);
    if (link < 0) return -saved;
    memset(&attr, 0, sizeof(attr));
    attr.iter_create.link_fd = (uint32_t)link;
    int iterator = (int)bpf(BPF_ITER_CREATE, &attr);
    saved = errno;
    close(link);
    return iterator < 0 ? -saved : iterator;
}
