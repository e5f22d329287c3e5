import Glibc

/// What `stat` says of a file, as plain Swift values (callers above the kernel layer never see
/// `struct stat`).
package struct FileStatus: Sendable, Equatable {
    /// The kinds of file `st_mode` distinguishes.
    package enum FileType: Sendable, Equatable {
        case regular, directory, symbolicLink, characterDevice, blockDevice, fifo, socket, unknown
    }

    /// The device holding the file, encoded as the kernel reports it (`st_dev`).
    package var device: UInt64
    package var inode: UInt64
    /// `st_mode`: file type and permission bits.
    package var mode: UInt32
    /// For device files, the device they stand for (`st_rdev`).
    package var specialDevice: UInt64
    package var size: Int64
    /// Last modification, nanoseconds since the epoch.
    package var modificationTime: Int64
    package var owner: UInt32

    package init(_ raw: stat) {
        device = UInt64(raw.st_dev)
        inode = UInt64(raw.st_ino)
        mode = UInt32(raw.st_mode)
        specialDevice = UInt64(raw.st_rdev)
        size = Int64(raw.st_size)
        modificationTime = Int64(raw.st_mtim.tv_sec) * 1_000_000_000 + Int64(raw.st_mtim.tv_nsec)
        owner = UInt32(raw.st_uid)
    }

    package var type: FileType {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): return .regular
        case UInt32(S_IFDIR): return .directory
        case UInt32(S_IFLNK): return .symbolicLink
        case UInt32(S_IFCHR): return .characterDevice
        case UInt32(S_IFBLK): return .blockDevice
        case UInt32(S_IFIFO): return .fifo
        case UInt32(S_IFSOCK): return .socket
        default: return .unknown
        }
    }

    /// The permission bits (`mode & 0o7777`).
    package var permissions: UInt32 { mode & 0o7777 }
}
