import Foundation
import MitosisImage
import MitosisKernel
import MitosisModel
import SystemPackage

/// The data files of a protected process (or tree), shipped with each epoch (Docs/replication.md,
/// "Data files"): regular files in the configured directories and regular files the process (a
/// member of the tree) holds open for writing.
///
/// Sizes are read while the process is frozen (`freeze`), contents after the thaw up to those
/// sizes: appended bytes are exact. Bytes rewritten in place between the thaw and the read
/// are shipped as read (a random-write file is exact only at a quiet instant; a snapshot of
/// the file at the freeze — reflinks — is the next step). Each file is compared block by block
/// (64 KiB, XXH64) with what the standby holds: growth goes as an append, changed blocks as
/// blocks, a file new to the standby (or every file after a full base) whole.
final class DataFiles: @unchecked Sendable {
    static let blockSize = 64 << 10
    /// Largest bytes per frame; a larger change goes in several.
    static let chunk = 8 << 20

    private let directories: [String]
    private let lock = NSLock()
    /// What the standby holds, per path, as of the last acknowledged epoch.
    private var shipped: [String: Shipped] = [:]
    /// What the epoch in flight will make it hold, once acknowledged.
    private var pending: [String: Shipped]?
    /// Sizes read at the freeze of the epoch in flight.
    private var frozenSizes: [String: UInt64] = [:]
    /// Where files compared block by block are read (`readPiece` bytes, kept: `deltas` runs on
    /// the epoch loop's thread only).
    private let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DataFiles.readPiece, alignment: 4096)
    /// Bytes read at once: whole blocks.
    static let readPiece = 16 * blockSize

    struct Shipped {
        var size: UInt64
        var mode: UInt32
        var blocks: [UInt64]
        var modified: Int64
        var device: UInt64 = 0
        var inode: UInt64 = 0
        /// The hash of the last block's bytes so far, when it is partial (`blocks.last` is its
        /// value): growth of an append-only file is hashed from the old end on, the bytes
        /// shipped before neither read nor hashed again.
        var tail: Checksum?
    }

    /// The directories are taken in canonical form (`realpath`), as the kernel names the files
    /// the process holds open: `/tmp//d` or a symbolic link would otherwise ship a file twice,
    /// once under each name.
    init(directories: [String]) {
        self.directories = directories.map { (try? Kernel.canonicalPath($0)) ?? $0 }
    }

    deinit { readBuffer.deallocate() }

    var isEmpty: Bool { directories.isEmpty && lock.withLock { shipped.isEmpty } }

    /// At the freeze: the size of every file known or in the directories.
    func freeze() {
        var sizes: [String: UInt64] = [:]
        for path in candidates(known: lock.withLock { Array(shipped.keys) }) {
            if let st = try? Kernel.linkStatusAt(nil, path), st.type == .regular { sizes[path] = UInt64(st.size) }
        }
        lock.withLock { frozenSizes = sizes }
    }

    /// The changes of this epoch. `full` ships every file whole (a new base);
    /// `openForWriting` are the files the process held open for writing at the freeze, and
    /// `appendOnly` those of them it held open only with `O_APPEND`: of such a file (same inode,
    /// not shrunk) only the blocks from the old end on are read — redis's AOF grows by MBs a
    /// second, and hashing all of it at every epoch made epochs grow with the file.
    func deltas(full: Bool, openForWriting: [String], appendOnly: Set<String>) throws -> [(FileDelta, [UInt8])] {
        let (known, sizes) = lock.withLock { (full ? [:] : shipped, frozenSizes) }
        var next: [String: Shipped] = [:]
        var result: [(FileDelta, [UInt8])] = []
        let paths = Set(candidates(known: Array(known.keys))).union(openForWriting)
        for path in paths.sorted() {
            guard let fd = try? Kernel.openAt(nil, path, options: [.readOnly, .noFollow, .nonBlocking]) else {
                if known[path] != nil { result.append((FileDelta(path: path, kind: .removed, offset: 0, size: 0, mode: 0), [])) }
                continue
            }
            defer { try? fd.close() }
            guard let st = try? Kernel.status(of: fd), st.type == .regular else { continue }
            let current = UInt64(st.size)
            let size: UInt64 = min(current, sizes[path] ?? current)
            let mode = UInt32(st.mode & 0o7777)
            let modified = st.modificationTime
            if let old = known[path], old.size == size, old.modified == modified, old.mode == mode {
                next[path] = old
                continue
            }
            var blocks: [UInt64] = []
            var offset: UInt64 = 0
            if let old = known[path], appendOnly.contains(path), old.inode == st.inode, old.device == st.device, size >= old.size {
                if let grown = try appended(fd, old: old, size: size) {
                    for piece in grown.pieces {
                        result.append((FileDelta(path: path, kind: .append, offset: piece.offset, size: size, mode: mode), piece.bytes))
                    }
                    if grown.pieces.isEmpty {
                        // Only the mode or time changed: the size and mode travel in the record.
                        result.append((FileDelta(path: path, kind: .block, offset: size, size: size, mode: mode), []))
                    }
                    next[path] = Shipped(size: size, mode: mode, blocks: grown.blocks, modified: modified, device: st.device,
                                         inode: st.inode, tail: grown.tail)
                    continue
                }
                let kept = Int(old.size / UInt64(Self.blockSize))
                blocks = Array(old.blocks.prefix(kept))
                offset = UInt64(kept) * UInt64(Self.blockSize)
            }
            var changed: [(offset: UInt64, bytes: [UInt8])] = []
            var tail: Checksum?
            // Read in large pieces into one buffer kept between epochs, each block hashed where it
            // lies and copied out only when changed: a file written without `O_APPEND` (redis's
            // AOF after its first rewrite) is read whole at every epoch, and reading it 64 KiB at a
            // time into fresh arrays cost a system call, an allocation and a zero fill per block.
            var cut = false
            while offset < size, !cut {
                let want = Int(min(UInt64(Self.readPiece), size - offset))
                let got = try Kernel.readAt(fd, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: readBuffer[0..<want]))
                var at = 0
                while at < want {
                    let count = min(Self.blockSize, want - at)
                    // Cut meanwhile: the blocks read whole are kept, as far as they go.
                    guard at + count <= got else {
                        cut = true
                        break
                    }
                    let block = UnsafeRawBufferPointer(rebasing: readBuffer[at..<at + count])
                    var hasher = Checksum()
                    hasher.update(block)
                    let hash = hasher.finalize()
                    tail = count < Self.blockSize ? hasher : nil
                    let index = blocks.count
                    blocks.append(hash)
                    // Unchanged: the same bytes over the same length (a partial last block that grew is changed).
                    var unchanged = false
                    if let old = known[path], index < old.blocks.count, old.blocks[index] == hash {
                        let oldLength: UInt64 = min(UInt64(Self.blockSize), old.size - offset)
                        unchanged = oldLength == UInt64(count)
                    }
                    if !unchanged {
                        if let last = changed.last, last.offset + UInt64(last.bytes.count) == offset, last.bytes.count + count <= Self.chunk {
                            changed[changed.count - 1].bytes.append(contentsOf: block)
                        } else {
                            changed.append((offset: offset, bytes: Array(block)))
                        }
                    }
                    offset += UInt64(count)
                    at += count
                }
            }
            let whole = known[path] == nil
            let oldSize: UInt64 = known[path]?.size ?? 0
            if whole && changed.isEmpty { result.append((FileDelta(path: path, kind: .whole, offset: 0, size: size, mode: mode), [])) }
            for (number, (at, bytes)) in changed.enumerated() {
                var kind = FileDelta.Kind.block
                if whole && number == 0 {
                    kind = .whole
                } else if at >= oldSize {
                    kind = .append
                }
                if kind == .whole && at != 0 {
                    result.append((FileDelta(path: path, kind: .whole, offset: 0, size: size, mode: mode), []))
                    result.append((FileDelta(path: path, kind: .block, offset: at, size: size, mode: mode), bytes))
                } else {
                    result.append((FileDelta(path: path, kind: kind, offset: at, size: size, mode: mode), bytes))
                }
            }
            if !whole && changed.isEmpty {
                // Shrunk, or only mode or time changed: the size and mode travel in the record.
                result.append((FileDelta(path: path, kind: .block, offset: size, size: size, mode: mode), []))
            }
            next[path] = Shipped(size: size, mode: mode, blocks: blocks, modified: modified, device: st.device, inode: st.inode,
                                 tail: offset == size ? tail : nil)
        }
        for path in known.keys where next[path] == nil && !result.contains(where: { $0.0.path == path }) {
            result.append((FileDelta(path: path, kind: .removed, offset: 0, size: 0, mode: 0), []))
        }
        lock.withLock { pending = next }
        return result
    }

    /// The growth of an append-only file from `old.size` to `size`, read in large pieces and
    /// shipped as appends from the exact old end; the block hashes go on from the old last
    /// block's hash state (`Shipped.tail`). Nil when that state is unknown (the caller then
    /// reads from the old last block's start). Of a file that turns out shorter than `size` (cut
    /// meanwhile) what is there is shipped, as the block-by-block read does.
    private func appended(_ fd: FileDescriptor, old: Shipped, size: UInt64) throws
        -> (pieces: [(offset: UInt64, bytes: [UInt8])], blocks: [UInt64], tail: Checksum?)? {
        let blockSize = UInt64(Self.blockSize)
        var hasher: Checksum
        var blocks = old.blocks
        if old.size % blockSize == 0 {
            guard blocks.count == Int(old.size / blockSize) else { return nil }
            hasher = Checksum()
        } else {
            guard let tail = old.tail, blocks.count == Int(old.size / blockSize) + 1 else { return nil }
            hasher = tail
            blocks.removeLast()
        }
        var pieces: [(offset: UInt64, bytes: [UInt8])] = []
        var offset = old.size
        while offset < size {
            let bytes = try Kernel.readAt(fd, offset: offset, count: Int(min(UInt64(Self.chunk), size - offset)))
            if bytes.isEmpty { break }
            bytes.withUnsafeBytes { bytes in
                var at = 0
                while at < bytes.count {
                    // Up to the end of the block `offset + at` lies in.
                    let room = Int(blockSize - (offset + UInt64(at)) % blockSize)
                    let count = min(room, bytes.count - at)
                    hasher.update(UnsafeRawBufferPointer(rebasing: bytes[at..<at + count]))
                    at += count
                    if count == room {
                        blocks.append(hasher.finalize())
                        hasher = Checksum()
                    }
                }
            }
            pieces.append((offset, bytes))
            offset += UInt64(bytes.count)
        }
        let partial = offset % blockSize != 0
        if partial { blocks.append(hasher.finalize()) }
        // Cut meanwhile (shorter than its size at the freeze): the next epoch reads its last block again.
        return (pieces, blocks, partial && offset == size ? hasher : nil)
    }

    /// The epoch in flight was acknowledged: the standby holds what it shipped.
    func acknowledged() {
        lock.withLock {
            if let pending { shipped = pending }
            pending = nil
        }
    }

    /// The epoch in flight failed: the standby holds what it held before.
    func failed() {
        lock.withLock { pending = nil }
    }

    /// What the standby holds once it commits the epoch in flight (or holds now, with none).
    var pendingState: [String: Shipped] { lock.withLock { pending ?? shipped } }

    /// The standby holds `state` (an earlier epoch's, from the history): the next epoch's
    /// deltas are computed against it.
    func restore(_ state: [String: Shipped]) {
        lock.withLock {
            shipped = state
            pending = nil
        }
    }

    /// Regular files directly in the configured directories, and the files already shipped.
    private func candidates(known: [String]) -> [String] {
        var paths = known
        for directory in directories {
            for name in (try? Kernel.listDirectory(directory)) ?? [] {
                let path = directory + "/" + name
                if let st = try? Kernel.linkStatusAt(nil, path), st.type == .regular { paths.append(path) }
            }
        }
        return paths
    }

    /// The changes of this epoch of the processes of `manifests` (one, or a tree's members):
    /// with `shipOpenFiles`, the regular files their descriptors hold open for writing are
    /// shipped too, and those every writing descriptor (of any member) holds with `O_APPEND`
    /// are read from their old end.
    func deltas(full: Bool, of manifests: [CheckpointManifest], shipOpenFiles: Bool) throws -> [(FileDelta, [UInt8])] {
        let writers = shipOpenFiles ? manifests.flatMap(Self.writers) : []
        let appendOnly = writers.filter { writer in writers.allSatisfy { $0.path != writer.path || $0.append } }.map(\.path)
        return try deltas(full: full, openForWriting: writers.map(\.path), appendOnly: Set(appendOnly))
    }

    /// Regular files a manifest's descriptors hold open for writing, and whether with `O_APPEND`.
    private static func writers(_ manifest: CheckpointManifest) -> [(path: String, append: Bool)] {
        (manifest.descriptors ?? []).compactMap { descriptor in
            guard descriptor.kind == .file, descriptor.flags & 3 != 0, !descriptor.deleted, let path = descriptor.path, path.hasPrefix("/") else { return nil }
            return (path, descriptor.flags & UInt32(Linux.O_APPEND) != 0)
        }
    }
}
