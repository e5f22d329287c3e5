// Every open descriptor of one thread in one pass: a BPF task/file iterator (kernel ≥ 6.1, root,
// BTF) whose program is assembled here from field offsets the caller resolved in the running
// kernel's BTF (/sys/kernel/btf/vmlinux), so no compiler and no object file are needed to build it.
#ifndef MITOSIS_FDITER_H
#define MITOSIS_FDITER_H
#include <stdint.h>

/// Where the program finds what it reads: byte offsets of struct members in the running kernel,
/// and the BTF id of the iterator's attach point.
struct mitosis_fd_offsets {
    uint32_t iter_function;  // BTF id of the FUNC `bpf_iter_task_file`
    int32_t ctx_meta, ctx_task, ctx_fd, ctx_file;  // struct bpf_iter__task_file
    int32_t meta_seq;                              // struct bpf_iter_meta
    int32_t file_flags, file_pos, file_inode, file_path;
    int32_t path_mnt;
    int32_t inode_ino, inode_mode, inode_rdev, inode_sb;
    int32_t sb_dev, sb_magic;
    int32_t mount_mnt, mount_id;  // struct mount: its vfsmount and its id
    int32_t task_files, files_fdt, fdt_close_on_exec;
    /// file.private_data and struct eventfd_ctx's count, id and flags; -1 each when the BTF lacks
    /// one (eventfds are then read from /proc).
    int32_t file_private_data, eventfd_count, eventfd_id, eventfd_flags;
};

/// One record the iterator writes per descriptor, followed by `path_length` bytes of its link
/// text (d_path, as /proc/PID/fd/N's readlink; NUL included). Device numbers in the kernel's
/// internal encoding (major << 20 | minor).
struct mitosis_fd_record {
    uint32_t fd;
    uint32_t flags;          // f_flags, O_CLOEXEC not included
    uint64_t position;       // f_pos
    uint64_t inode;          // i_ino
    uint32_t mode;           // i_mode
    uint32_t special_device; // i_rdev
    uint32_t device;         // i_sb->s_dev
    uint32_t close_on_exec;  // 1 when the fd's bit is set in the table's close_on_exec bitmap
    uint64_t magic;          // i_sb->s_magic
    uint64_t file;           // the struct file's address: equal for descriptors sharing one open file description
    int32_t mount_id;        // real_mount(f_path.mnt)->mnt_id
    int32_t path_length;     // bytes of path after the record; ≤ 0 when d_path failed (none follow)
    // For a file on the anonymous-inode filesystem, what private_data holds if it is an eventfd
    // (user space trusts them only for `anon_inode:[eventfd]`): eventfd-count, eventfd-id and
    // the flags (EFD_SEMAPHORE). eventfd_id is -1 when they were not read.
    uint64_t eventfd_count;
    int32_t eventfd_id;
    uint32_t eventfd_flags;
};

/// Loads the program, attaches it to thread `tid`'s file table and returns the iterator's
/// descriptor (read it to its end for the records), or -errno. The verifier's complaint, if the
/// load fails, is left in `log`.
int mitosis_fd_iterator_open(const struct mitosis_fd_offsets *offsets, int tid, char *log, uint32_t log_size);

#endif
