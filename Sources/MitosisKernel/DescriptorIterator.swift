import CMitosis
import Foundation
import Glibc
import MitosisModel
import SystemPackage

/// Every open descriptor of a process read in one pass by the kernel itself: a BPF task/file
/// iterator (`CMitosis/fditer.c`) attached to one thread's file table. Reading /proc costs a
/// path lookup, an open and a read per descriptor (and lsof pays the same); the iterator costs
/// one `read` per ~30 KiB of records.
///
/// Needs root (CAP_BPF and CAP_PERFMON), kernel BTF (`/sys/kernel/btf/vmlinux`) and a kernel
/// ≥ 6.1 (iterators of one thread); `DescriptorIterator.open` is nil where any is missing, and
/// callers read /proc instead. What it gives equals what /proc gives for the same open file
/// (`DescriptorIteratorTests` compares the two on real processes).
package enum DescriptorIterator {
    /// What the iterator tells of one descriptor (see `mitosis_fd_record`).
    package struct Record: Sendable, Equatable {
        package var fd: Int32
        /// As fdinfo's `flags:`, O_CLOEXEC included.
        package var flags: UInt32
        package var position: UInt64
        package var inode: UInt64
        /// `st_mode` of the open file's inode.
        package var mode: UInt32
        package var device: DeviceNumber
        package var specialDevice: DeviceNumber
        /// The filesystem's magic number (`statfs.f_type`).
        package var fileSystemMagic: UInt64
        /// The open file description's kernel address: equal for descriptors that share one.
        package var openFile: UInt64
        package var mountId: Int
        /// The link text, as `readlink /proc/PID/fd/N` gives it; nil when the kernel could not
        /// print it (longer than 4 KiB).
        package var target: String?
        /// For a file on the anonymous-inode filesystem, its `private_data` read as an eventfd's
        /// (counter, id, flags): meaningful only when `target` is `anon_inode:[eventfd]`; nil
        /// when not read (another filesystem, or the BTF lacks `eventfd_ctx`).
        package var eventfd: Eventfd?
    }

    /// An eventfd's state as the iterator read it from `struct eventfd_ctx`.
    package struct Eventfd: Sendable, Equatable {
        package var counter: UInt64
        package var id: Int32
        /// `EFD_SEMAPHORE` and the other flags eventfd2 was given.
        package var flags: UInt32
        /// What fdinfo's `eventfd-semaphore:` says.
        package var semaphore: Bool { flags & 1 != 0 }  // EFD_SEMAPHORE
    }

    /// Which kernels the iterator is used on.
    package enum Kernels: Sendable {
        /// Those where it was compared with /proc (6.18 on): what Mitosis uses.
        case verified
        /// Any where it loads (6.1 on): for the tests that compare it with /proc there (the kernel matrix).
        case any
    }

    /// The records of every descriptor in thread `tid`'s file table, ascending by fd; nil when
    /// the iterator is unavailable here (not root, no BTF, an older kernel) or fails.
    package static func records(tid: Int32, kernels: Kernels = .verified) -> [Record]? {
        guard case .success(var copy) = offsets(kernels) else { return nil }
        let iterator = mitosis_fd_iterator_open(&copy, tid, nil, 0)
        guard iterator >= 0 else { return nil }
        defer { close(iterator) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(1 << 20)
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { chunk.deallocate() }
        while true {
            let count = read(iterator, chunk.baseAddress, chunk.count)
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                return nil
            }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return parse(bytes)
    }

    /// Finds the running kernel's offsets now, on a thread of its own: parsing its 5 MiB of BTF
    /// takes tens of milliseconds, once per process, and a checkpoint's first `records` is in
    /// its freeze (which then waits only for what is left of it).
    package static func prepare() {
        let thread = Thread { _ = offsets }
        thread.name = "mitosis-btf"
        thread.start()
    }

    /// Why the iterator cannot be used here, or nil when it can: for a test that must say why it skipped.
    package static func unavailableReason(tid: Int32, kernels: Kernels = .verified) -> String? {
        switch offsets(kernels) {
        case .failure(let reason): return reason.text
        case .success(var copy):
            var log = [CChar](repeating: 0, count: 1 << 16)
            let iterator = mitosis_fd_iterator_open(&copy, tid, &log, UInt32(log.count))
            if iterator >= 0 {
                close(iterator)
                return nil
            }
            let text = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return "loading the iterator failed: \(Errno(rawValue: -iterator))" + (text.isEmpty ? "" : "\n" + text.suffix(2000))
        }
    }

    package struct Unavailable: Error, Sendable { var text: String }

    private static func offsets(_ kernels: Kernels) -> Result<mitosis_fd_offsets, Unavailable> {
        if kernels == .verified, let reason = unverifiedKernel { return .failure(Unavailable(text: reason)) }
        return offsets
    }

    /// Why the running kernel is not one where the iterator was compared with /proc
    /// (DescriptorIteratorTests on 6.18; the kernel matrix runs them on 6.1 and 6.12 with
    /// `.any`), or nil: there /proc is read.
    private static let unverifiedKernel: String? = {
        let release = (try? Kernel.readFile("/proc/sys/kernel/osrelease")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        let version = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard version.count == 2, (version[0], version[1]) >= (6, 18) else {
            return "kernel \(release.trimmingCharacters(in: .whitespacesAndNewlines)): the iterator is verified from 6.18 on; /proc is read"
        }
        return nil
    }()

    /// The offsets of the running kernel's structs, found once per process in its BTF.
    /// `MITOSIS_DESCRIPTOR_ITERATOR=0` in the environment turns the iterator off (/proc is read
    /// instead): to compare the two paths, or to step around a kernel that misbehaves.
    private static let offsets: Result<mitosis_fd_offsets, Unavailable> = {
        if let setting = getenv("MITOSIS_DESCRIPTOR_ITERATOR"), String(cString: setting) == "0" {
            return .failure(Unavailable(text: "turned off by MITOSIS_DESCRIPTOR_ITERATOR=0"))
        }
        guard let bytes = try? Kernel.readSizedFile("/sys/kernel/btf/vmlinux", limit: 256 << 20) else {
            return .failure(Unavailable(text: "no kernel BTF at /sys/kernel/btf/vmlinux"))
        }
        guard let btf = KernelBTF(bytes) else { return .failure(Unavailable(text: "unreadable kernel BTF")) }
        return resolve(btf).map { .success($0) } ?? .failure(Unavailable(text: "kernel BTF lacks bpf_iter_task_file or a struct member the iterator reads"))
    }()

    /// Each member the program reads, with the size its load assumes.
    private static func resolve(_ btf: KernelBTF) -> mitosis_fd_offsets? {
        func offset(_ structure: String, _ member: String, size: Int?) -> Int32? {
            guard let found = btf.member(structure, member), size == nil || found.size == size else { return nil }
            return Int32(found.offset)
        }
        guard let function = btf.functionID("bpf_iter_task_file"),
              let ctxMeta = offset("bpf_iter__task_file", "meta", size: 8), let ctxTask = offset("bpf_iter__task_file", "task", size: 8),
              let ctxFd = offset("bpf_iter__task_file", "fd", size: 4), let ctxFile = offset("bpf_iter__task_file", "file", size: 8),
              let metaSeq = offset("bpf_iter_meta", "seq", size: 8),
              let fileFlags = offset("file", "f_flags", size: 4), let filePos = offset("file", "f_pos", size: 8),
              let fileInode = offset("file", "f_inode", size: 8), let filePath = offset("file", "f_path", size: nil),
              let pathMnt = offset("path", "mnt", size: 8),
              let inodeIno = offset("inode", "i_ino", size: 8), let inodeMode = offset("inode", "i_mode", size: 2),
              let inodeRdev = offset("inode", "i_rdev", size: 4), let inodeSb = offset("inode", "i_sb", size: 8),
              let sbDev = offset("super_block", "s_dev", size: 4), let sbMagic = offset("super_block", "s_magic", size: 8),
              let mountMnt = offset("mount", "mnt", size: nil), let mountId = offset("mount", "mnt_id", size: 4),
              let taskFiles = offset("task_struct", "files", size: 8), let filesFdt = offset("files_struct", "fdt", size: 8),
              let closeOnExec = offset("fdtable", "close_on_exec", size: 8)
        else { return nil }
        // Optional: without them eventfds are read from /proc.
        let privateData = offset("file", "private_data", size: 8), eventfdCount = offset("eventfd_ctx", "count", size: 8)
        let eventfdID = offset("eventfd_ctx", "id", size: 4), eventfdFlags = offset("eventfd_ctx", "flags", size: 4)
        return mitosis_fd_offsets(
            iter_function: function, ctx_meta: ctxMeta, ctx_task: ctxTask, ctx_fd: ctxFd, ctx_file: ctxFile, meta_seq: metaSeq,
            file_flags: fileFlags, file_pos: filePos, file_inode: fileInode, file_path: filePath, path_mnt: pathMnt,
            inode_ino: inodeIno, inode_mode: inodeMode, inode_rdev: inodeRdev, inode_sb: inodeSb, sb_dev: sbDev, sb_magic: sbMagic,
            mount_mnt: mountMnt, mount_id: mountId, task_files: taskFiles, files_fdt: filesFdt, fdt_close_on_exec: closeOnExec,
            file_private_data: privateData ?? -1, eventfd_count: eventfdCount ?? -1, eventfd_id: eventfdID ?? -1,
            eventfd_flags: eventfdFlags ?? -1)
    }

    /// Records as `mitosis_fd_record` lays them out, each followed by its path. A truncated
    /// record ends the list.
    static func parse(_ bytes: [UInt8]) -> [Record] {
        let header = MemoryLayout<mitosis_fd_record>.size
        var records: [Record] = []
        var at = 0
        bytes.withUnsafeBytes { raw in
            while at + header <= raw.count {
                let record = raw.loadUnaligned(fromByteOffset: at, as: mitosis_fd_record.self)
                let length = Int(record.path_length)
                let pathBytes = length > 0 && at + header + length <= raw.count ? length : 0
                // d_path's length counts the terminating NUL.
                let target = pathBytes > 0
                    ? String(decoding: UnsafeRawBufferPointer(rebasing: raw[(at + header)..<(at + header + pathBytes - 1)]), as: UTF8.self)
                    : nil
                records.append(Record(
                    fd: Int32(bitPattern: record.fd), flags: record.flags | (record.close_on_exec != 0 ? UInt32(O_CLOEXEC) : 0),
                    position: record.position, inode: record.inode, mode: record.mode,
                    device: DeviceNumber(kernel: UInt64(record.device)), specialDevice: DeviceNumber(kernel: UInt64(record.special_device)),
                    fileSystemMagic: record.magic, openFile: record.file, mountId: Int(record.mount_id), target: target,
                    eventfd: record.eventfd_id >= 0
                        ? Eventfd(counter: record.eventfd_count, id: record.eventfd_id, flags: record.eventfd_flags) : nil))
                at += header + pathBytes
            }
        }
        return records
    }
}
