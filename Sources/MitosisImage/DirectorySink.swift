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
public final class DirectorySink: CheckpointSink, @unchecked Sendable {
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
    }

    /// A sink that will create the image directory `path` (which must not exist yet).
    public init(directory path: String) {
        (self.path, parentPath, name) = Self.split(path)
    }

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
                state = .open(try Writer(header: header, parentPath: parentPath, name: name, path: path))
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

    @discardableResult
    public func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest {
        try lock.withLock {
            let writer = try openWriter()
            let stored = try failing(writer, recoverable: false) { () throws(ImageError) in try writer.commit(manifest) }
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
                state = .closed("aborted")
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

    package init(header: CheckpointHeader, parentPath: String, name: String, path: String) throws(ImageError) {
        self.header = header
        self.path = path
        self.name = name
        partialName = ImageFormat.partialName(for: name, id: header.id)
        builder = PageRunBuilder(pageSize: header.pageSize)
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
            let data = try Self.create(ImageFormat.dataName, in: directory)
            opened.append(data)
            try Kernel.sync(directory)
            pages = try DataFileWriter(data)
            (self.parent, self.directory, self.marker, self.data) = (parent, directory, marker, data)
        } catch {
            for fd in opened { try? fd.close() }
            try? parent.close()
            throw Self.imageError(path, "create \(partialName)", error)
        }
    }

    private static func create(_ file: String, in directory: FileDescriptor) throws(Errno) -> FileDescriptor {
        let fd = try Kernel.openAt(directory, file, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
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
        do throws(ImageError) {
            try builder.add(address: address, bytes) { piece throws(ImageError) in
                try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.write(piece) }
            }
        } catch {
            try? pages.drain()
            throw error
        }
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.drain() }
    }

    // MARK: Commit

    package func commit(_ draft: CheckpointManifest) throws(ImageError) -> CheckpointManifest {
        guard draft.header == header else {
            throw .sinkState("the manifest's identity (id, kind, parent, sequence, pid, created, page size) differs from the header's")
        }
        let (index, runs, dataDigest) = try builder.finish()
        let pages = self.pages
        try Self.io(path, "write \(ImageFormat.dataName)") { () throws(Errno) in try pages.finish() }
        try Self.io(path, "fsync \(ImageFormat.dataName)") { () throws(Errno) in try Kernel.sync(data) }
        let indexDigest = try writeFile(ImageFormat.indexName, index)
        let manifest = builder.complete(draft, runs: runs, index: indexDigest, data: dataDigest)
        let json: [UInt8]
        do {
            json = Array(try JSONOutput.encoder().encode(manifest)) + [0x0A]
        } catch {
            throw .malformed(path, file: ImageFormat.manifestName, detail: "cannot encode: \(error)")
        }
        let manifestDigest = try writeFile(ImageFormat.manifestName, json)
        let commit = ImageFormat.encodeCommit(id: header.id, files: [
            (ImageFormat.manifestName, manifestDigest), (ImageFormat.indexName, indexDigest), (ImageFormat.dataName, dataDigest),
        ])
        _ = try writeFile(ImageFormat.commitName, commit)

        try Self.io(path, "commit") { () throws(Errno) in
            try Kernel.unlinkAt(directory, ImageFormat.incompleteName)
            try Kernel.sync(directory)
        }
        do {
            try Kernel.renameNoReplace(parent, partialName, name)
        } catch {
            throw error == .fileExists || error == .directoryNotEmpty ? .alreadyExists(path) : Self.imageError(path, "rename", error)
        }
        try Self.io(path, "fsync parent directory") { () throws(Errno) in try Kernel.sync(parent) }
        closeAll()
        return manifest
    }

    private func writeFile(_ file: String, _ bytes: [UInt8]) throws(ImageError) -> FileDigest {
        let directory = self.directory
        return try Self.io(path, "write \(file)") { () throws(Errno) in
            let fd = try Self.create(file, in: directory)
            defer { try? fd.close() }
            try Kernel.writeAll(fd, bytes)
            try Kernel.sync(fd)
            return FileDigest(size: UInt64(bytes.count), xxh64: Checksum.xxh64(bytes))
        }
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
        for fd in [data, marker, directory, parent] { try? fd.close() }
    }

    deinit { closeAll() }
}
