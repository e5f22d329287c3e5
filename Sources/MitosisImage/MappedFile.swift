import SystemPackage
import MitosisKernel

/// What a checkpoint records about the file behind a mapping with `clean_file` pages, so that a
/// reader takes bytes from a file only when it is the very file, with the very content, that the
/// process had mapped. Without it a manifest naming `/etc/shadow` would disclose that file.
///
/// The content is hashed in chunks of `ImageFormat.maxRunPages` pages of the mapping, so that
/// reading one page checks at most one chunk of the file, as with stored runs.
public struct MappedFileIdentity: Codable, Sendable, Hashable {
    /// `st_dev`, `st_ino`, `st_size` and `st_mtim` (nanoseconds since the epoch) of the file.
    public var device: UInt64
    public var inode: UInt64
    public var size: UInt64
    public var mtimeNs: Int64
    /// XXH64 (16 hex digits) of each chunk of the mapped range `[offset, offset + end - start)`,
    /// clipped to the file's size; chunks wholly past the end of the file are not listed.
    public var chunkXxh64: [String]

    public init(device: UInt64, inode: UInt64, size: UInt64, mtimeNs: Int64, chunkXxh64: [String]) {
        self.device = device
        self.inode = inode
        self.size = size
        self.mtimeNs = mtimeNs
        self.chunkXxh64 = chunkXxh64
    }
}

/// Opening and checking the files that `clean_file` pages come from.
enum MappedFile {
    /// Filesystems whose "regular files" are kernel interfaces, where reading may consume data
    /// (`/proc/kmsg`) or disclose state: proc, sysfs, debugfs, tracefs, securityfs, cgroup v1
    /// and v2, configfs, bpf, efivarfs, pstore.
    static let pseudoFileSystems: Set<Int> = [
        0x9FA0, 0x6265_6572, 0x6462_6720, 0x7472_6163, 0x7363_6673, 0x0027_E0EB, 0x6367_7270,
        0x6265_6570, 0xCAFE_4A11, 0xDE5E_81E4, 0x6165_676C,
    ]

    /// Opens `path` for reading mapped bytes: an absolute path to a regular file on a real
    /// filesystem, never through a final symbolic link, never blocking (a FIFO would otherwise
    /// hang the open). Throws a reason a reader can show.
    static func open(_ path: String) throws(MappedFileRefusal) -> (FileDescriptor, FileStatus) {
        guard path.hasPrefix("/") else { throw MappedFileRefusal("its path is not absolute") }
        let fd: FileDescriptor
        do {
            fd = try Kernel.openAt(nil, path, options: [.readOnly, .noFollow, .nonBlocking, .noControllingTerminal])
        } catch {
            throw MappedFileRefusal("it cannot be opened: \(error)")
        }
        do {
            let st = try Kernel.status(of: fd)
            guard st.type == .regular else { throw MappedFileRefusal("it is not a regular file") }
            let type: Int
            do { type = try Kernel.fileSystemType("/proc/self/fd/\(fd.rawValue)") } catch { throw MappedFileRefusal("statfs failed: \(error)") }
            guard !pseudoFileSystems.contains(type) else {
                throw MappedFileRefusal("it is on a kernel pseudo filesystem (0x\(String(type, radix: 16)))")
            }
            return (fd, st)
        } catch let error as MappedFileRefusal {
            try? fd.close()
            throw error
        } catch {
            try? fd.close()
            throw MappedFileRefusal("fstat failed: \(error)")
        }
    }

    static func chunkBytes(pageSize: Int) -> UInt64 { UInt64(ImageFormat.maxRunPages) * UInt64(pageSize) }

    /// The file byte range `[from, to)` that chunk `number` of a mapping covers (clipped to the
    /// file's size), or nil when it lies wholly past the end of the file. The caller has bounded
    /// `offset + length` (at most `Int64.max`).
    static func chunkRange(_ number: UInt64, offset: UInt64, length: UInt64, size: UInt64, pageSize: Int) -> Range<UInt64>? {
        let chunk = chunkBytes(pageSize: pageSize)
        guard number < (length + chunk - 1) / chunk else { return nil }
        let from = offset + number * chunk
        let to = min(offset + min(length, (number + 1) * chunk), size)
        return from < to ? from..<to : nil
    }

    /// How many chunks of a mapping lie (at least partly) inside the file.
    static func chunkCount(offset: UInt64, length: UInt64, size: UInt64, pageSize: Int) -> Int {
        guard size > offset else { return 0 }
        let chunk = chunkBytes(pageSize: pageSize)
        return Int((min(length, size - offset) + chunk - 1) / chunk)
    }

    /// The identity of the open file `fd` (whose status is `st`) for a mapping of `length`
    /// bytes at file offset `offset`: reads and hashes the mapped range.
    static func identity(_ fd: FileDescriptor, _ st: FileStatus, offset: UInt64, length: UInt64, pageSize: Int) throws(Errno) -> MappedFileIdentity {
        let size = UInt64(st.size)
        var chunks: [String] = []
        let count = chunkCount(offset: offset, length: length, size: size, pageSize: pageSize)
        for number in 0..<UInt64(count) {
            let range = chunkRange(number, offset: offset, length: length, size: size, pageSize: pageSize)!
            let bytes = try Kernel.readAt(fd, offset: range.lowerBound, count: Int(range.count))
            chunks.append(Checksum.hex(Checksum.xxh64(bytes)))
        }
        return MappedFileIdentity(device: st.device, inode: st.inode, size: size, mtimeNs: st.modificationTime, chunkXxh64: chunks)
    }

    /// Whether `st` still describes the file `identity` recorded (content aside).
    static func matches(_ st: FileStatus, _ identity: MappedFileIdentity) -> Bool {
        st.device == identity.device && st.inode == identity.inode && UInt64(st.size) == identity.size
            && st.modificationTime == identity.mtimeNs
    }
}

/// Why the file behind `clean_file` pages is not read.
struct MappedFileRefusal: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

extension MappedFileIdentity {
    /// The identity of the file at `path` for a mapping of `length` bytes at file offset
    /// `offset`, if it is a regular file with inode `inode` (the one the process maps) on a real
    /// filesystem; nil when it cannot be identified (its `clean_file` pages will then not be
    /// read back). `reuse` is returned without hashing again when the file's status still matches it.
    public static func capture(path: String, inode: UInt64, offset: UInt64, length: UInt64, pageSize: Int,
                               reuse: MappedFileIdentity? = nil) -> MappedFileIdentity? {
        guard length <= UInt64(Int64.max), offset <= UInt64(Int64.max) - length, let (fd, st) = try? MappedFile.open(path) else { return nil }
        defer { try? fd.close() }
        guard st.inode == inode else { return nil }
        if let reuse, MappedFile.matches(st, reuse) { return reuse }
        guard let identity = try? MappedFile.identity(fd, st, offset: offset, length: length, pageSize: pageSize),
              let after = try? Kernel.status(of: fd), MappedFile.matches(after, identity)
        else { return nil }
        return identity
    }
}
