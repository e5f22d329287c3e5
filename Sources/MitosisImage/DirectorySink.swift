import Foundation
import SystemPackage
import MitosisKernel
import MitosisModel

/// Writes a checkpoint as an image directory (Docs/image-format.md).
///
/// Everything is written into a hidden sibling `.NAME.partial-ID` (mode 0700, files created
/// exclusively, never through a symbolic link, mode 0600), synced, and renamed to `NAME` only
/// when complete — without ever replacing anything there. Until then the sibling holds an
/// `INCOMPLETE` marker; on any failure (a full disk included) the sink aborts: it frees the page
/// data, records the reason in the marker and leaves the sibling for inspection. Existing images
/// are never touched, so the chain they form stays valid.
public final class DirectorySink: EarlyPageSink, @unchecked Sendable {
    /// The image directory this sink creates.
    public let path: String
    private let parentPath: String
    private let name: String
    private let lock = NSLock()
    private var state: State = .idle

    private enum State {
        case idle
        case open(Writer)
        case closed(String)
        /// Aborted by this error: later calls (a wait for writes already in flight, say) throw
        /// it again, so the caller sees why (a full disk), not that the sink is closed.
        case failed(ImageError)
    }

    /// How the page data is compressed; nil (the default) stores the pages as they are.
    public let compression: PageCompression?
    /// Whether the image is on the device when `finish` returns (the default), or may not be
    /// after a crash of the machine (see `init`).
    public let synced: Bool

    /// A sink that will create the image directory `path` (which must not exist yet), its page
    /// data compressed with `compression` (Docs/image-format.md; none by default: compressing
    /// costs CPU time and the early writes of a full checkpoint's first round).
    ///
    /// `synced: false` fsyncs nothing, as CRIU fsyncs nothing: the image is committed by the same
    /// rename, so no reader sees a partial one while the machine runs, but a crash of the machine
    /// may lose it or leave its files damaged (a reader then refuses them by their checksums).
    /// Not durable: for comparisons and throwaway images. The page data is still written with
    /// direct I/O: through the page cache (as CRIU writes) the same 1 GiB dump took 0.8–3.8 s
    /// against 0.9–1.4 s direct on this machine (Docs/performance.md), so only the fsyncs go.
    public init(directory path: String, compression: PageCompression? = nil, synced: Bool = true) {
        (self.path, parentPath, name) = Self.split(path)
        self.compression = compression
        self.synced = synced
    }

    package var takesEarlyPages: Bool { compression == nil }

    /// `path` without trailing slashes, the directory that holds it, and its last component.
    private static func split(_ path: String) -> (path: String, parent: String, name: String) {
        var trimmed = path
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return (trimmed, ".", trimmed) }
        return (trimmed, slash == trimmed.startIndex ? "/" : String(trimmed[..<slash]), String(trimmed[trimmed.index(after: slash)...]))
    }

    /// The directory that will hold the image `path`, after checking that `path` can name a new
    /// image at all (not empty, `.`, `..` or `/`).
    public static func container(of path: String) throws(ImageError) -> String {
        let (_, parent, name) = split(path)
        guard !name.isEmpty, name != ".", name != ".." else { throw .invalidImageName(path) }
        return parent
    }

    /// Creates `path` and any missing parent, each new one with mode 0700 whatever the umask:
    /// the images kept there must not be replaceable by other users. Existing directories are
    /// left as they are.
    public static func createDirectories(_ path: String) throws(ImageError) {
        guard !path.isEmpty else { throw .invalidImageName(path) }
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
            do {
                try Kernel.makeDirectoryAt(nil, prefix, mode: 0o700)
                let created = try Kernel.openAt(nil, prefix, options: [.readOnly, .directory, .noFollow])
                defer { try? created.close() }
                try Kernel.changeMode(created, 0o700)
            } catch .fileExists {
                guard let st = try? Kernel.status(prefix), st.type == .directory else {
                    throw .io(prefix, operation: "create directory", errno: .notDirectory)
                }
            } catch {
                throw .io(prefix, operation: "create directory", errno: error)
            }
        }
    }

    deinit {
        if case .open(let writer) = state { writer.abort(reason: "the sink was released before the checkpoint finished") }
    }

    /// Where the checkpoint is written until it is committed.
    public var partialPath: String? {
        lock.withLock {
            if case .open(let writer) = state { return parentPath + "/" + writer.partialName }
            return nil
        }
    }

    public func begin(_ header: CheckpointHeader) throws {
        try lock.withLock {
            guard case .idle = state else { throw ImageError.sinkState("begin called twice") }
            guard !name.isEmpty, name != ".", name != ".." else { throw ImageError.invalidImageName(path) }
            try checkHeader(header)
            do {
                state = .open(try Writer(header: header, parentPath: parentPath, name: name, path: path, compression: compression, synced: synced))
            } catch {
                state = .closed("begin failed")
                throw error
            }
        }
    }

    public func writePages(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        try lock.withLock {
            let writer = try openWriter()
            try failing(writer, recoverable: true) { () throws(ImageError) in
                try validateRun(address: address, count: bytes.count, pageSize: writer.header.pageSize)
                try writer.append(address: address, bytes)
            }
        }
    }

    package func writeEarly(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws -> UInt64 {
        try lock.withLock {
            let writer = try openWriter()
            return try failing(writer, recoverable: false) { () throws(ImageError) in try writer.writeEarly(address: address, bytes) }
        }
    }

    package func waitEarly(_ mark: UInt64) throws {
        try lock.withLock {
            let writer = try openWriter()
            try failing(writer, recoverable: false) { () throws(ImageError) in try writer.waitEarly(mark) }
        }
    }

    package func endEarly() throws {
        try lock.withLock {
            let writer = try openWriter()
            try failing(writer, recoverable: false) { () throws(ImageError) in try writer.endEarly() }
        }
    }

    package func keepEarly(at address: UInt64, length: Int) throws {
        try lock.withLock {
            let writer = try openWriter()
            try failing(writer, recoverable: false) { () throws(ImageError) in try writer.keepEarly(address: address, length: length) }
        }
    }

    @discardableResult
    public func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest {
        try finish(manifest, encoded: nil)
    }

    /// As `finish(_:)`, with `encoded` written as `manifest.json` instead of an encoding of
    /// `manifest` (a standby writes the manifest it received, `ManifestRelink`): the caller has
    /// checked that `encoded` decodes to `manifest`. `manifest` must already hold what the pages
    /// written make of it (format version, page index summary, digests of the index and data):
    /// otherwise nothing is committed and `ImageError.invalidPages` says so. `syncing`: files
    /// the caller wrote inside the partial directory (`partialPath`), synced with the image's own
    /// before the rename (left open).
    @discardableResult
    package func finish(_ manifest: CheckpointManifest, encoded: [UInt8]?, syncing: [FileDescriptor] = []) throws -> CheckpointManifest {
        try lock.withLock {
            let writer = try openWriter()
            let stored = try failing(writer, recoverable: false) { () throws(ImageError) in try writer.commit(manifest, encoded: encoded, syncing: syncing) }
            state = .closed("finished")
            return stored
        }
    }

    public func abort(reason: String) {
        lock.withLock {
            guard case .open(let writer) = state else { return }
            writer.abort(reason: reason)
            state = .closed("aborted")
        }
    }

    private func openWriter() throws(ImageError) -> Writer {
        switch state {
        case .idle: throw .sinkState("pages or finish before begin")
        case .closed(let how): throw .sinkState("the checkpoint was already \(how)")
        case .failed(let error): throw error
        case .open(let writer): return writer
        }
    }

    /// Runs `body`; on failure aborts the checkpoint with the error as reason and rethrows —
    /// except, when `recoverable`, for pages refused before anything was written.
    private func failing<T>(_ writer: Writer, recoverable: Bool, _ body: () throws(ImageError) -> T) throws(ImageError) -> T {
        do {
            return try body()
        } catch {
            if recoverable, case .invalidPages = error {} else {
                writer.abort(reason: error.description)
                state = .failed(error)
            }
            throw error
        }
    }
}

/// Checks that a header describes a checkpoint a reader can follow.
package func checkHeader(_ header: CheckpointHeader) throws(ImageError) {
    guard header.pageSize > 0, header.pageSize & (header.pageSize - 1) == 0 else {
        throw .invalidPages("page size \(header.pageSize) is not a power of two")
    }
    guard !header.id.isEmpty, !header.id.contains(where: { $0 == "/" || $0 == " " || $0 == "\n" }) else {
        throw .sinkState("checkpoint id '\(header.id)' is empty or holds '/', space or newline")
    }
    switch (header.kind, header.parent) {
    case (.full, nil), (.incremental, .some): break
    case (.full, .some): throw .sinkState("a full checkpoint has no parent")
    case (.incremental, nil): throw .sinkState("an incremental checkpoint needs a parent")
    }
}

/// The open files of one checkpoint being written.
private final class Writer {
    package let header: CheckpointHeader
    package let path: String
    package let partialName: String
    private let name: String
    private let parent: FileDescriptor
    private let directory: FileDescriptor
    private let marker: FileDescriptor
    private let data: FileDescriptor
    private let pages: DataFileWriter
    private var builder: PageRunBuilder
    private var closed = false
    /// False: nothing is fsynced (`DirectorySink.init`'s `synced`).
    private let synced: Bool

    package init(header: CheckpointHeader, parentPath: String, name: String, path: String, compression: PageCompression?,
                 synced: Bool) throws(ImageError) {
        self.header = header
        self.synced = synced
        self.path = path
        self.name = name
        partialName = ImageFormat.partialName(for: name, id: header.id)
        builder = try PageRunBuilder(pageSize: header.pageSize, compression: compression)
        let parent = try Self.io(path, "open parent directory") { () throws(Errno) in
            try Kernel.openAt(nil, parentPath, options: [.readOnly, .directory])
        }
        let existing: Result<FileStatus, Errno> = Result { () throws(Errno) in try Kernel.linkStatusAt(parent, name) }
        switch existing {
        case .success(let st):
            try? parent.close()
            throw st.type == .symbolicLink ? .symlinkRefused(path) : .alreadyExists(path)
        case .failure(.noSuchFileOrDirectory):
            break
        case .failure(let error):
            try? parent.close()
            throw Self.imageError(path, "stat", error)
        }
        let partialName = self.partialName
        do {
            try Kernel.makeDirectoryAt(parent, partialName, mode: 0o700)
        } catch {
            try? parent.close()
            throw error == .fileExists ? .alreadyExists(parentPath + "/" + partialName) : Self.imageError(path, "mkdir", error)
        }
        var opened: [FileDescriptor] = []
        do {
            let directory = try Kernel.openAt(parent, partialName, options: [.readOnly, .directory, .noFollow])
            opened.append(directory)
            let marker = try Self.create(ImageFormat.incompleteName, in: directory)
            opened.append(marker)
            let note = Array("in progress: written by pid \(getpid()) since \(header.created), never finished\n".utf8)
            try Kernel.writeAll(marker, note)
            // Readable too: early pages are read back when the final ones differ from them.
            let data = try Self.create(ImageFormat.dataName, in: directory, readable: true)
            opened.append(data)
            // No sync here: nothing needs these entries to survive a crash before the commit.
            // The directory's hidden partial name already says "never finished" (readers refuse
            // it by name, a standby removes it at its next start), and the commit syncs the
            // directory before the rename that makes the image visible.
            pages = try DataFileWriter(data)
            (self.parent, self.directory, self.marker, self.data) = (parent, directory, marker, data)
        } catch {
            for fd in opened { try? fd.close() }
            try? parent.close()
            throw Self.imageError(path, "create \(partialName)", error)
        }
    }

    private static func create(_ file: String, in directory: FileDescriptor, readable: Bool = false) throws(Errno) -> FileDescriptor {
        let fd = try Kernel.openAt(directory, file, options: [readable ? .readWrite : .writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
        do {
            try Kernel.changeMode(fd, 0o600)
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    package static func imageError(_ path: String, _ operation: String, _ errno: Errno) -> ImageError {
        errno == .noSpace || errno == .diskQuotaExceeded ? .noSpace(path) : .io(path, operation: operation, errno: errno)
    }

    package static func io<T>(_ path: String, _ operation: String, _ body: () throws(Errno) -> T) throws(ImageError) -> T {
        do { return try body() } catch { throw imageError(path, operation, error) }
    }

    // MARK: Pages

    /// Hands the pages to the data file's writer, hashes them meanwhile (`PageRunBuilder` emits
    /// a piece before hashing it) and waits for the write: `bytes` is the caller's only until
    /// this returns.
    package func append(address: UInt64, _ bytes: UnsafeRawBufferPointer) throws(ImageError) {
        let pages = self.pages
        // Pages handed over now go after the early ones still matching.
        if !early.isEmpty, case .matching(let piece, let within) = replay ?? .matching(piece: 0, within: 0), piece < early.count {
            try diverge(at: piece, within: within)
        }
        // A compressed run's frame is handed over from a buffer reused for the next: copied.
        let copying = builder.compression != nil
        do throws(ImageError) {
            try builder.add(address: address, bytes) { piece throws(ImageError) in
                try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.write(piece, copying: copying) }
            }
        } catch {
            try? pages.drain()
            throw error
        }
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.drain() }
    }

    // MARK: Early pages

    /// A piece handed over by `writeEarly`: where it went in the data file, and the run builder
    /// as it was before it, to go back to should the final pages differ from there on.
    private struct EarlyPiece {
        var address: UInt64
        var length: UInt64
        var offset: UInt64
        var before: PageRunBuilder
        var end: UInt64 { address + length }
    }
    private var early: [EarlyPiece] = []
    /// How the final pages compare with the early ones; nil until the first final page.
    private var replay: Replay?
    private enum Replay {
        /// The same so far: the next final page is expected `within` bytes into `early[piece]`.
        case matching(piece: Int, within: UInt64)
        /// The builder went back to where they first differed: early bytes are read back.
        case rebuilding
    }
    /// Where early bytes are read back into (page-aligned, for direct I/O).
    private var readBackBuffer: UnsafeMutableRawBufferPointer?
    private static let readBackSize = 1 << 20

    package func writeEarly(address: UInt64, _ bytes: UnsafeRawBufferPointer) throws(ImageError) -> UInt64 {
        guard replay == nil else { throw .sinkState("early pages after the final ones") }
        guard builder.compression == nil else { throw .sinkState("a compressed image takes no early pages") }
        try validateRun(address: address, count: bytes.count, pageSize: header.pageSize)
        if let last = early.last, address < last.end {
            throw .sinkState("early pages at 0x\(String(address, radix: 16)) below earlier ones")
        }
        let pages = self.pages
        let piece = EarlyPiece(address: address, length: UInt64(bytes.count), offset: builder.dataSize, before: builder)
        // The builder would hand the bytes over run by run, in order: one write of them all is
        // the same data. Hashed while the device writes them.
        let mark = try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.writeEarly(bytes) }
        try builder.add(address: address, bytes) { _ throws(ImageError) in }
        early.append(piece)
        return mark
    }

    package func waitEarly(_ mark: UInt64) throws(ImageError) {
        let pages = self.pages
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.waitEarly(mark) }
    }

    package func endEarly() throws(ImageError) {
        let pages = self.pages
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.endEarly() }
    }

    package func keepEarly(address: UInt64, length: Int) throws(ImageError) {
        try validateRun(address: address, count: length, pageSize: header.pageSize)
        var at = address, remaining = UInt64(length)
        if case .matching(var piece, var within) = replay ?? .matching(piece: 0, within: 0) {
            while remaining > 0, piece < early.count, early[piece].address + within == at {
                let take = min(remaining, early[piece].length - within)
                (within, at, remaining) = (within + take, at + take, remaining - take)
                if within == early[piece].length { (piece, within) = (piece + 1, 0) }
            }
            replay = .matching(piece: piece, within: within)
            guard remaining > 0 else { return }
            if piece < early.count { try diverge(at: piece, within: within) } else { replay = .rebuilding }
        }
        // Rebuilding: from the early pieces holding [at, at + remaining).
        while remaining > 0 {
            var low = 0, high = early.count
            while low < high {
                let middle = (low + high) / 2
                if early[middle].end <= at { low = middle + 1 } else { high = middle }
            }
            guard low < early.count, early[low].address <= at else {
                throw .sinkState("pages at 0x\(String(at, radix: 16)) were not handed over early")
            }
            let piece = early[low]
            let take = min(remaining, piece.end - at)
            try readBack(address: at, length: take, from: piece.offset + (at - piece.address))
            (at, remaining) = (at + take, remaining - take)
        }
    }

    /// The final pages differ from the early ones `within` bytes into `early[piece]`: the builder
    /// goes back to before that piece and rehashes the bytes of it that are still current.
    private func diverge(at piece: Int, within: UInt64) throws(ImageError) {
        let pages = self.pages
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.finish() }
        let start = early[piece]
        builder = start.before
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.seek(to: start.offset) }
        replay = .rebuilding
        if within > 0 { try readBack(address: start.address, length: within, from: start.offset) }
    }

    /// Adds the early bytes of `address..<address + length`, which are at `offset` in the data
    /// file, as if handed over now: read back, hashed, and written where they now belong (not
    /// written when that is where they are).
    private func readBack(address: UInt64, length: UInt64, from offset: UInt64) throws(ImageError) {
        let pages = self.pages
        let data = self.data
        let buffer: UnsafeMutableRawBufferPointer
        if let known = readBackBuffer {
            buffer = known
        } else {
            let base = try Self.io(path, "read back \(ImageFormat.dataName)") { () throws(Errno) in try Kernel.mapAnonymous(length: Self.readBackSize) }
            buffer = UnsafeMutableRawBufferPointer(start: base, count: Self.readBackSize)
            readBackBuffer = buffer
        }
        var done: UInt64 = 0
        while done < length {
            let count = Int(min(UInt64(buffer.count), length - done))
            var source = offset + done
            // Bytes still to be read must not have been overwritten by then.
            guard source >= builder.dataSize else {
                throw .sinkState("early pages at 0x\(String(address + done, radix: 16)) come after pages written over them")
            }
            let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            let read = try Self.io(path, "read back \(ImageFormat.dataName)") { () throws(Errno) in
                try Kernel.readAt(data, offset: source, into: chunk)
            }
            guard read == count else { throw .io(path, operation: "read back \(ImageFormat.dataName)", errno: .ioError) }
            try builder.add(address: address + done, UnsafeRawBufferPointer(chunk)) { piece throws(ImageError) in
                try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in
                    if pages.offset == source {
                        try pages.seek(to: source + UInt64(piece.count))
                    } else {
                        try pages.write(piece)
                    }
                }
                source += UInt64(piece.count)
            }
            // The buffer is reused: its bytes must be written first.
            try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.finish() }
            done += UInt64(count)
        }
    }

    /// Before commit: the early pages the final ones left out at the end are dropped.
    private func settleEarly() throws(ImageError) {
        guard let last = early.last else { return }
        if case .matching(let piece, let within) = replay ?? .matching(piece: 0, within: 0), piece < early.count {
            try diverge(at: piece, within: within)
        }
        let pages = self.pages
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.finish() }
        // Early pages left out at the end, or the file extended ahead of the early writes.
        if last.offset + last.length > builder.dataSize || pages.extended > builder.dataSize {
            let size = builder.dataSize
            let data = self.data
            try Self.io(path, "truncate \(ImageFormat.dataName)") { () throws(Errno) in try Kernel.truncate(data, to: Int(size)) }
        }
    }

    // MARK: Commit

    package func commit(_ draft: CheckpointManifest, encoded: [UInt8]?, syncing extra: [FileDescriptor]) throws(ImageError) -> CheckpointManifest {
        guard draft.header == header else {
            throw .sinkState("the manifest's identity (id, kind, parent, sequence, pid, created, page size) differs from the header's")
        }
        try settleEarly()
        let pages = self.pages
        let (index, runs, dataDigest) = try builder.finish { frame throws(ImageError) in
            try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.write(frame, copying: true) }
        }
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.finish() }
        // The marker goes first, so that the directory's last change comes before the files'
        // syncs rather than after them (a journaling file system then commits it with theirs).
        // Until the rename the hidden partial name says "never finished" as well; should
        // anything below fail, `abort` creates the marker again.
        try Self.io(path, "commit") { () throws(Errno) in try Kernel.unlinkAt(directory, ImageFormat.incompleteName) }
        var written: [FileDescriptor] = []
        defer { for fd in written { try? fd.close() } }
        let indexDigest = try writeFile(ImageFormat.indexName, index, into: &written)
        let manifest = builder.complete(draft, runs: runs, index: indexDigest, data: dataDigest)
        let json: [UInt8]
        if let encoded {
            guard manifest == draft else {
                throw .invalidPages("the pages received differ from what the manifest says was stored (page index summary, digests or format version)")
            }
            json = encoded
        } else {
            do {
                json = try JSONOutput.bytes(manifest) + [0x0A]
            } catch {
                throw .malformed(path, file: ImageFormat.manifestName, detail: "cannot encode: \(error)")
            }
        }
        let manifestDigest = try writeFile(ImageFormat.manifestName, json, into: &written)
        let commit = ImageFormat.encodeCommit(id: header.id, files: [
            (ImageFormat.manifestName, manifestDigest), (ImageFormat.indexName, indexDigest), (ImageFormat.dataName, dataDigest),
        ])
        _ = try writeFile(ImageFormat.commitName, commit, into: &written)
        // Every file durable before the rename: their writeback started together, then each
        // waited for. One sync per file still, but their writeback runs together, not file
        // after file (15–25 % less time in the syncs on ext4 here, Docs/replication.md). Their
        // order among themselves does not matter: nothing reads the partial directory, and the
        // rename below is the commit.
        let data = self.data
        // Unsynced (`synced: false`): nothing is fsynced, as CRIU fsyncs nothing.
        if synced { try Self.io(path, "fsync") { () throws(Errno) in
            for fd in written + extra { try Kernel.startWriteback(fd) }
            try Kernel.dataSync(data)
            for fd in written + extra { try Kernel.dataSync(fd) }
            // The entries of the files (and the marker's removal) before the rename.
            try Kernel.sync(directory)
        } }
        do {
            try Kernel.renameNoReplace(parent, partialName, name)
        } catch {
            throw error == .fileExists || error == .directoryNotEmpty ? .alreadyExists(path) : Self.imageError(path, "rename", error)
        }
        // Durable before the caller relies on it (a standby acknowledges the epoch after this).
        if synced { try Self.io(path, "fsync parent directory") { () throws(Errno) in try Kernel.sync(parent) } }
        closeAll()
        return manifest
    }

    /// Writes `file` and leaves it open in `written`, not yet synced.
    private func writeFile(_ file: String, _ bytes: [UInt8], into written: inout [FileDescriptor]) throws(ImageError) -> FileDigest {
        let directory = self.directory
        let fd = try Self.io(path, "write \(file)") { () throws(Errno) in try Self.create(file, in: directory) }
        written.append(fd)
        try Self.io(path, "write \(file)") { () throws(Errno) in try Kernel.writeAll(fd, bytes) }
        return FileDigest(size: UInt64(bytes.count), xxh64: Checksum.xxh64(bytes))
    }

    // MARK: Abort

    /// Frees the page data and records `reason` in the `INCOMPLETE` marker, best effort: on a
    /// full disk writing the reason may fail too, and the marker's first text remains.
    package func abort(reason: String) {
        guard !closed else { return }
        try? pages.drain()
        try? Kernel.truncate(data, to: 0)
        // The marker may have been removed just before a failed rename: create it again.
        let marker = (try? Kernel.linkStatusAt(directory, ImageFormat.incompleteName)) == nil
            ? (try? Self.create(ImageFormat.incompleteName, in: directory)) : self.marker
        if let marker {
            let note = Array("aborted: \(reason)\n".utf8)
            if (try? Kernel.truncate(marker, to: 0)) != nil {
                try? Kernel.writeAll(marker, note, at: 0)
            }
            try? Kernel.sync(marker)
            if marker != self.marker { try? marker.close() }
        }
        try? Kernel.sync(directory)
        closeAll()
    }

    private func closeAll() {
        guard !closed else { return }
        closed = true
        try? pages.drain()
        pages.close()
        if let readBackBuffer { Kernel.unmap(readBackBuffer.baseAddress!, length: readBackBuffer.count) }
        for fd in [data, marker, directory, parent] { try? fd.close() }
    }

    deinit { closeAll() }
}
