import Foundation
import SystemPackage
import MitosisKernel
import MitosisModel

/// A committed checkpoint image opened for reading (Docs/image-format.md).
///
/// Opening never trusts the directory: the commit record's own checksum, the size and checksum
/// of the manifest and page index, and every count, length and offset are checked before use,
/// so damaged, truncated or hostile images are reported as `ImageError`s. The page data is
/// checked run by run as it is read, and in full by `verify()`. Files are opened without
/// blocking (a FIFO cannot hang a reader) and only regular files are read.
///
/// An open image holds no descriptor: `pages.data` is reopened for each read and checked to be
/// the file that was opened, so that a chain longer than the open-file limit can be read.
public final class CheckpointImage: Sendable {
    /// The image directory as given.
    public let path: String
    public let manifest: CheckpointManifest
    /// The page index: runs sorted by address, disjoint.
    public let runs: [PageRun]
    /// How the page data is compressed (a version 3 index); nil when stored as it is.
    public let compression: PageCompression?
    private let commitDigests: [String: FileDigest]
    /// `st_dev` and `st_ino` of `pages.data` when the image was opened.
    private let dataFile: (device: UInt64, inode: UInt64)

    private init(path: String, manifest: CheckpointManifest, runs: [PageRun], compression: PageCompression?,
                 commitDigests: [String: FileDigest], dataFile: (device: UInt64, inode: UInt64)) {
        self.path = path
        self.manifest = manifest
        self.runs = runs
        self.compression = compression
        self.commitDigests = commitDigests
        self.dataFile = dataFile
    }

    /// Pages stored in this image itself, parents excluded.
    public var storedPages: Int { manifest.pageIndex.pages }

    /// Opens and checks the image at `path` (everything but the page data's full checksum).
    public static func open(_ path: String) throws(ImageError) -> CheckpointImage {
        try open(path, written: nil)
    }

    /// As `open(_:)`, for an image this process has just committed with `DirectorySink`, which
    /// returned `written`: the manifest file is read and checked against the commit record's
    /// digest like any other, but not decoded again — it is the encoding of `written` (a
    /// standby commits an epoch every 50 ms; decoding its JSON again was most of the check).
    package static func open(_ path: String, written: CheckpointManifest?) throws(ImageError) -> CheckpointImage {
        let directory: FileDescriptor
        do {
            directory = try Kernel.openAt(nil, path, options: [.readOnly, .directory, .nonBlocking])
        } catch .notDirectory {
            throw .notAnImage(path)
        } catch {
            throw .io(path, operation: "open", errno: error)
        }
        defer { try? directory.close() }
        // Anything named INCOMPLETE marks the image incomplete, a symbolic link or FIFO too;
        // only a regular file's text is read as the reason.
        switch Result(catching: { () throws(Errno) in try Kernel.linkStatusAt(directory, ImageFormat.incompleteName) }) {
        case .success(let st):
            var note: [UInt8] = []
            if st.type == .regular,
               let marker = try? Kernel.openAt(directory, ImageFormat.incompleteName, options: [.readOnly, .noFollow, .nonBlocking]) {
                if let opened = try? Kernel.status(of: marker), opened.type == .regular {
                    note = (try? Kernel.readAt(marker, offset: 0, count: 4096)) ?? []
                }
                try? marker.close()
            }
            let reason = String(decoding: note, as: UTF8.self).trimmingCharacters(in: " \n\t")
            throw .incomplete(path, reason: reason.isEmpty ? "no reason recorded" : reason)
        case .failure(.noSuchFileOrDirectory):
            break
        case .failure(let error):
            throw .io(path, operation: "stat \(ImageFormat.incompleteName)", errno: error)
        }
        let name = path.split(separator: "/").last.map(String.init) ?? path
        if name.hasPrefix("."), name.contains(".partial-") {
            throw .incomplete(path, reason: "its partial name says it was never renamed into place: a writer stopped before the commit")
        }
        let commitBytes: [UInt8]
        switch Result(catching: { () throws(ImageError) in try readSmallFile(directory, ImageFormat.commitName, image: path, limit: ImageFormat.maxCommitBytes) }) {
        case .success(let bytes): commitBytes = bytes
        case .failure(.io(_, _, .noSuchFileOrDirectory)):
            if (try? Kernel.linkStatusAt(directory, ImageFormat.manifestName)) != nil {
                throw .incomplete(path, reason: "no commit record: the writer was interrupted")
            }
            throw .notAnImage(path)
        case .failure(let error): throw error
        }
        let commit = try ImageFormat.decodeCommit(commitBytes, image: path)

        var files: [String: FileDescriptor] = [:]
        var dataFile: (device: UInt64, inode: UInt64) = (0, 0)
        defer { for fd in files.values { try? fd.close() } }
        for file in ImageFormat.committedFiles {
            let fd = try openCommitted(directory, file, image: path)
            files[file] = fd
            let size = try statusSize(fd, file, image: path)
            if file == ImageFormat.dataName, let st = try? Kernel.status(of: fd) { dataFile = (st.device, st.inode) }
            let expected = commit.files[file]!.size
            guard size == expected else {
                throw .truncated(path, file: file, detail: "\(size) bytes, the commit record says \(expected)")
            }
        }
        let manifest = try readManifest(files[ImageFormat.manifestName]!, digest: commit.files[ImageFormat.manifestName]!, image: path, written: written)
        guard manifest.id == commit.id else {
            throw ImageError.malformed(path, file: ImageFormat.manifestName, detail: "id \(manifest.id) differs from the commit record's \(commit.id)")
        }
        for file in [ImageFormat.indexName, ImageFormat.dataName] where manifest.files[file] != commit.files[file] {
            throw ImageError.malformed(path, file: ImageFormat.manifestName, detail: "its digest of \(file) differs from the commit record's")
        }
        try checkMappings(manifest, image: path)
        let dataSize = commit.files[ImageFormat.dataName]!.size
        let indexDigest = commit.files[ImageFormat.indexName]!
        // Every entry stores at least one page (or, compressed, one byte of a frame), so a sound
        // index is never larger than this; its version, in its header, says which.
        let version = (try? Kernel.readAt(files[ImageFormat.indexName]!, offset: 8, count: 4)).flatMap { $0.count == 4 ? $0 : nil }
        let compressed = version.map { $0.littleEndianUInt32(at: 0) == ImageFormat.compressedIndexVersion } ?? false
        let indexLimit = UInt64(ImageFormat.indexHeaderSize + ImageFormat.indexTrailerSize) + (compressed
            ? min(dataSize, ImageFormat.maxIndexBytes) * UInt64(ImageFormat.compressedIndexEntrySize)
            : (dataSize / UInt64(manifest.pageSize)) * UInt64(ImageFormat.indexEntrySize))
        guard indexDigest.size <= indexLimit else {
            throw ImageError.malformed(path, file: ImageFormat.indexName, detail: "\(indexDigest.size) bytes is more than \(dataSize) bytes of pages need")
        }
        guard indexDigest.size <= ImageFormat.maxIndexBytes else {
            throw ImageError.malformed(path, file: ImageFormat.indexName, detail: "\(indexDigest.size) bytes, more than \(ImageFormat.maxIndexBytes) allowed")
        }
        let indexBytes = try readAll(files[ImageFormat.indexName]!, size: indexDigest.size, file: ImageFormat.indexName, image: path)
        guard Checksum.hex(Checksum.xxh64(indexBytes)) == indexDigest.xxh64 else {
            throw ImageError.checksumMismatch(path, file: ImageFormat.indexName, entry: nil)
        }
        let (runs, compression) = try ImageFormat.decodeIndexAndCompression(indexBytes, image: path, pageSize: manifest.pageSize, dataSize: dataSize)
        let summary = manifest.pageIndex
        let summedBytes = summary.pages >= 0 ? UInt64(summary.pages).multipliedReportingOverflow(by: UInt64(manifest.pageSize)) : (partialValue: 0, overflow: true)
        // Runs are at most 1 MiB each and fewer than 2^23: their sum cannot overflow.
        let pageBytes = runs.reduce(UInt64(0)) { $0 + $1.length }
        guard runs.count == summary.runs, dataSize == summary.bytes, !summedBytes.overflow, summedBytes.partialValue == pageBytes else {
            throw ImageError.malformed(path, file: ImageFormat.manifestName, detail: "its page index summary differs from \(ImageFormat.indexName)")
        }
        return CheckpointImage(path: path, manifest: manifest, runs: runs, compression: compression, commitDigests: commit.files, dataFile: dataFile)
    }

    // MARK: Chain

    /// This image as a chain reads an ancestor: the same files and page index, with a manifest
    /// that keeps only its identity, chain link, page index summary and digests (no mappings,
    /// process, threads, descriptors or restore record). A standby keeps one per committed epoch,
    /// so that compacting its chain decodes no manifest again (decoding them all was a fifth of
    /// its CPU): `CheckpointChain.read` takes the mappings from the newest image only.
    package func asAncestor() -> CheckpointImage {
        var slim = CheckpointManifest(header: manifest.header, tracking: manifest.tracking, mappings: [], stats: manifest.stats)
        slim.formatVersion = manifest.formatVersion
        slim.pageIndex = manifest.pageIndex
        slim.files = manifest.files
        return CheckpointImage(path: path, manifest: slim, runs: runs, compression: compression, commitDigests: commitDigests, dataFile: dataFile)
    }

    /// The parent image, checked against the recorded id; nil for a full checkpoint.
    public func parent() throws(ImageError) -> CheckpointImage? {
        guard let link = manifest.parent else { return nil }
        let joined = link.path.hasPrefix("/") ? link.path : path + "/" + link.path
        // Shown in messages, so made readable (`/x/0`, not `/x/2/../1/../0`) the way the kernel resolves it.
        let parentPath = (try? Kernel.canonicalPath(joined)) ?? joined
        let parent: CheckpointImage
        do {
            parent = try CheckpointImage.open(parentPath)
        } catch .io(_, _, .noSuchFileOrDirectory), .notAnImage {
            throw .parentMissing(path, parent: link.path)
        }
        guard parent.manifest.id == link.id else { throw .parentMismatch(path, expected: link.id, found: parent.manifest.id) }
        // Below the child's, not necessarily just below: a standby's compaction turns an image in
        // the middle of a chain into a full base (sequence 0) under the images that follow it.
        guard parent.manifest.sequence < manifest.sequence else {
            throw .malformed(path, file: ImageFormat.manifestName,
                             detail: "sequence \(manifest.sequence) does not follow its parent's \(parent.manifest.sequence)")
        }
        guard parent.manifest.pageSize == manifest.pageSize else {
            throw .malformed(path, file: ImageFormat.manifestName, detail: "page size differs from its parent's")
        }
        return parent
    }

    /// This image and its ancestors, newest first, ending with a full checkpoint.
    public func chain() throws(ImageError) -> CheckpointChain {
        var images = [self]
        var seen: Set<String> = [manifest.id]
        while let parent = try images.last!.parent() {
            guard seen.insert(parent.manifest.id).inserted else { throw .chainCycle(path) }
            images.append(parent)
        }
        return CheckpointChain(images: images)
    }

    /// The bytes at `address` as the chain reconstructs them (see `CheckpointChain.read`).
    public func read(address: UInt64, length: Int) throws(ImageError) -> [UInt8] {
        try chain().read(address: address, length: length)
    }

    // MARK: Verification

    /// Checks this image's page data completely: the file checksum, every run's checksum, and
    /// that the pages the manifest says are stored here are exactly those in the index.
    /// Returns every problem found (empty when sound).
    public func verify() -> [ImageError] {
        var problems: [ImageError] = []
        let data: FileDescriptor
        do { data = try openData() } catch { return [error] }
        defer { try? data.close() }
        var fileHasher = Checksum()
        // The runs tile pages.data exactly (checked at open), so reading them in data order hashes the file.
        for (number, run) in runs.enumerated().sorted(by: { $0.element.dataOffset < $1.element.dataOffset }) {
            if run.isCompressed {
                do throws(ImageError) {
                    let frame = try readFrame(run, number: number, from: data)
                    fileHasher.update(frame)
                    var bytes = [UInt8](repeating: 0, count: Int(run.length))
                    let result: Result<Void, ImageError> = bytes.withUnsafeMutableBytes { buffer in
                        Result { () throws(ImageError) in try decompress(frame, run, number: number, into: buffer) }
                    }
                    try result.get()
                    if Checksum.xxh64(bytes) != run.checksum { problems.append(.checksumMismatch(path, file: ImageFormat.dataName, entry: number)) }
                } catch {
                    if case .io = error { return problems + [error] }
                    if case .truncated = error { return problems + [error] }
                    problems.append(error)
                }
                continue
            }
            var runHasher = Checksum()
            var done: UInt64 = 0
            while done < run.length {
                let count = Int(min(1 << 20, run.length - done))
                let chunk: [UInt8]
                do {
                    chunk = try Kernel.readAt(data, offset: run.dataOffset + done, count: count)
                } catch {
                    problems.append(.io(path, operation: "read \(ImageFormat.dataName)", errno: error))
                    return problems
                }
                guard chunk.count == count else {
                    problems.append(.truncated(path, file: ImageFormat.dataName, detail: "ends inside entry \(number)"))
                    return problems
                }
                runHasher.update(chunk)
                fileHasher.update(chunk)
                done += UInt64(count)
            }
            if runHasher.finalize() != run.checksum { problems.append(.checksumMismatch(path, file: ImageFormat.dataName, entry: number)) }
        }
        if Checksum.hex(fileHasher.finalize()) != commitDigests[ImageFormat.dataName]?.xxh64 {
            problems.append(.checksumMismatch(path, file: ImageFormat.dataName, entry: nil))
        }
        if let difference = storedRangesDifference() {
            problems.append(.malformed(path, file: ImageFormat.manifestName,
                                       detail: "pages marked stored differ from \(ImageFormat.indexName) at 0x\(String(difference, radix: 16))"))
        }
        return problems
    }

    /// Verifies the image at `path` and every ancestor: each file's checksum, each run, each
    /// parent link by id. Returns every problem found, oldest last (empty when the chain is sound).
    public static func verifyChain(_ path: String) -> [ImageError] {
        var problems: [ImageError] = []
        var seen: Set<String> = []
        var current: CheckpointImage
        do {
            current = try open(path)
        } catch {
            return [error]
        }
        var images: [CheckpointImage] = []
        var filesChecked: Set<CheckpointMapping> = []
        while true {
            guard seen.insert(current.manifest.id).inserted else { return problems + [.chainCycle(path)] }
            images.append(current)
            problems += current.verify()
            problems += current.mappedFileProblems(skipping: &filesChecked)
            do {
                guard let parent = try current.parent() else { break }
                current = parent
            } catch {
                return problems + [error]
            }
        }
        // Verified means readable: every inherited page is held by an ancestor.
        var held: [(UInt64, UInt64)] = []
        for image in images.reversed() {
            if let address = image.firstUnheldInheritedPage(held) {
                problems.append(.notStored(address: address, detail: "\(image.path) records it as inherited but no ancestor holds it"))
            }
            held = coalesce(held + image.runs.map { ($0.address, $0.end) })
        }
        return problems
    }

    /// The first page this image records as inherited that `held` (sorted, disjoint) lacks.
    private func firstUnheldInheritedPage(_ held: [(UInt64, UInt64)]) -> UInt64? {
        for mapping in manifest.mappings {
            for range in mapping.pages where range.state == .inherited {
                var low = 0, high = held.count
                while low < high {
                    let mid = (low + high) / 2
                    if held[mid].1 <= range.start { low = mid + 1 } else { high = mid }
                }
                guard low < held.count, held[low].0 <= range.start else { return range.start }
                guard held[low].1 >= range.end else { return held[low].1 }
            }
        }
        return nil
    }

    /// Problems that keep `clean_file` pages from being read: no recorded identity of the file,
    /// or a file that is no longer the one recorded (see `CheckpointChain.read`).
    /// `checked` holds the mappings (file, offset, identity) found sound in other images of the
    /// chain: images of one process map the same libraries, which are hashed once.
    private func mappedFileProblems(skipping checked: inout Set<CheckpointMapping>) -> [ImageError] {
        var problems: [ImageError] = []
        for mapping in manifest.mappings where mapping.pages.contains(where: { $0.state == .cleanFile }) {
            var key = mapping
            key.pages = []
            key.perms = ""
            guard !checked.contains(key) else { continue }
            do {
                let fd = try CheckpointChain.openMappedFile(mapping)
                defer { try? fd.close() }
                for number in 0..<mapping.file!.chunkXxh64.count {
                    _ = try CheckpointChain.fileChunk(fd, number, mapping: mapping, pageSize: manifest.pageSize)
                }
                checked.insert(key)
            } catch {
                problems.append(.unreadableFile(path, file: mapping.path ?? "", detail: "\(error)"))
            }
        }
        return problems
    }

    /// The first address where "stored" ranges of the manifest and the index disagree, or nil.
    private func storedRangesDifference() -> UInt64? {
        let stored = Self.coalesce(manifest.mappings.flatMap { $0.pages.filter { $0.state == .stored }.map { ($0.start, $0.end) } })
        let indexed = Self.coalesce(runs.map { ($0.address, $0.end) })
        for (a, b) in zip(stored, indexed) where a != b { return min(a.0, b.0) }
        if stored.count != indexed.count { return (stored.count > indexed.count ? stored[indexed.count] : indexed[stored.count]).0 }
        return nil
    }

    private static func coalesce(_ ranges: [(UInt64, UInt64)]) -> [(UInt64, UInt64)] {
        var result: [(UInt64, UInt64)] = []
        for range in ranges.sorted(by: { $0.0 < $1.0 }) {
            if let last = result.last, last.1 >= range.0 { result[result.count - 1].1 = max(last.1, range.1) } else { result.append(range) }
        }
        return result
    }

    // MARK: Page data

    /// The run of this image holding the page at `address`, if any.
    public func run(containing address: UInt64) -> PageRun? {
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low < runs.count && runs[low].address <= address ? runs[low] : nil
    }

    /// The first run of this image starting above `address`, if any.
    public func firstRun(after address: UInt64) -> PageRun? {
        var low = 0, high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].address <= address { low = mid + 1 } else { high = mid }
        }
        return low < runs.count ? runs[low] : nil
    }

    /// A run's bytes, checked against its checksum.
    package func bytes(of run: PageRun) throws(ImageError) -> [UInt8] {
        let data = try openPageData()
        defer { try? data.close() }
        var bytes = [UInt8](repeating: 0, count: Int(run.length))
        let result: Result<Void, ImageError> = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(ImageError) in try read(run, from: data, into: buffer) }
        }
        try result.get()
        return bytes
    }

    /// Reads a run's bytes into the start of `buffer` (at least `run.length` bytes) from `data`
    /// (opened by `openPageData`) and checks them against the run's checksum: a restore reuses
    /// one buffer and one descriptor for every run instead of allocating both per run.
    package func read(_ run: PageRun, from data: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) {
        // Which entry failed: looked up only on failure (a linear search).
        var number: Int? { runs.firstIndex(of: run) }
        guard buffer.count >= Int(run.length) else { throw .malformed(path, file: ImageFormat.dataName, detail: "entry \(number ?? -1) is larger than a run may be") }
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[..<Int(run.length)])
        if run.isCompressed {
            let frame = try readFrame(run, number: number, from: data)
            try decompress(frame, run, number: number, into: target)
            guard Checksum.xxh64(UnsafeRawBufferPointer(target)) == run.checksum else { throw .checksumMismatch(path, file: ImageFormat.dataName, entry: number) }
            return
        }
        let count: Int
        do {
            count = try Kernel.readAt(data, offset: run.dataOffset, into: target)
        } catch {
            throw .io(path, operation: "read \(ImageFormat.dataName)", errno: error)
        }
        guard count == Int(run.length) else { throw .truncated(path, file: ImageFormat.dataName, detail: "ends inside entry \(number ?? -1)") }
        guard Checksum.xxh64(UnsafeRawBufferPointer(target)) == run.checksum else { throw .checksumMismatch(path, file: ImageFormat.dataName, entry: number) }
    }

    /// A compressed run's frame as stored (at most a run's length: bounded at open).
    private func readFrame(_ run: PageRun, number: Int?, from data: FileDescriptor) throws(ImageError) -> [UInt8] {
        let frame: [UInt8]
        do {
            frame = try Kernel.readAt(data, offset: run.dataOffset, count: Int(run.storedLength))
        } catch {
            throw .io(path, operation: "read \(ImageFormat.dataName)", errno: error)
        }
        guard frame.count == Int(run.storedLength) else { throw .truncated(path, file: ImageFormat.dataName, detail: "ends inside entry \(number ?? -1)") }
        return frame
    }

    /// Decompresses a run's frame into `target` (exactly the run's length): a damaged or hostile
    /// frame, or one that decompresses to any other length, is one error naming the entry.
    private func decompress(_ frame: [UInt8], _ run: PageRun, number: Int?,
                            into target: UnsafeMutableRawBufferPointer) throws(ImageError) {
        let written = frame.withUnsafeBytes { ZstdCompressor.decompress($0, into: target) }
        guard written == Int(run.length) else {
            throw .malformed(path, file: ImageFormat.dataName,
                             detail: "entry \(number ?? -1) is not a zstd frame of \(run.length) bytes (damaged compressed data)")
        }
    }

    /// Opens `pages.data` for `read(_:from:into:)`, refusing anything but the file checked when
    /// the image was opened. The caller closes it.
    package func openPageData() throws(ImageError) -> FileDescriptor { try openData() }

    /// Opens `pages.data` again, refusing anything but the file checked when the image was opened.
    private func openData() throws(ImageError) -> FileDescriptor {
        let name = path + "/" + ImageFormat.dataName
        let fd: FileDescriptor
        do {
            fd = try Kernel.openAt(nil, name, options: [.readOnly, .noFollow, .nonBlocking, .noControllingTerminal])
        } catch .tooManySymbolicLinkLevels {
            throw .symlinkRefused(name)
        } catch {
            throw .io(path, operation: "open \(ImageFormat.dataName)", errno: error)
        }
        guard let st = try? Kernel.status(of: fd), st.type == .regular, st.device == dataFile.device,
              st.inode == dataFile.inode, UInt64(st.size) == commitDigests[ImageFormat.dataName]?.size
        else {
            try? fd.close()
            throw .malformed(path, file: ImageFormat.dataName, detail: "replaced or resized since the image was opened")
        }
        return fd
    }

    // MARK: Opening helpers

    /// Opens an image file without following a final symbolic link and without blocking (a
    /// FIFO would otherwise block the open until a writer comes); the caller checks its type.
    private static func openCommitted(_ directory: FileDescriptor, _ file: String, image: String) throws(ImageError) -> FileDescriptor {
        do {
            return try Kernel.openAt(directory, file, options: [.readOnly, .noFollow, .nonBlocking, .noControllingTerminal])
        } catch .noSuchFileOrDirectory {
            throw .truncated(image, file: file, detail: "missing")
        } catch .tooManySymbolicLinkLevels {
            throw .symlinkRefused(image + "/" + file)
        } catch {
            throw .io(image, operation: "open \(file)", errno: error)
        }
    }

    private static func statusSize(_ fd: FileDescriptor, _ file: String, image: String) throws(ImageError) -> UInt64 {
        let st: FileStatus
        do { st = try Kernel.status(of: fd) } catch { throw .io(image, operation: "stat \(file)", errno: error) }
        guard st.type == .regular else { throw .malformed(image, file: file, detail: "not a regular file") }
        return UInt64(st.size)
    }

    private static func readSmallFile(_ directory: FileDescriptor, _ file: String, image: String, limit: UInt64) throws(ImageError) -> [UInt8] {
        let fd: FileDescriptor
        do {
            fd = try Kernel.openAt(directory, file, options: [.readOnly, .noFollow, .nonBlocking, .noControllingTerminal])
        } catch .tooManySymbolicLinkLevels {
            throw .symlinkRefused(image + "/" + file)
        } catch {
            throw .io(image, operation: "open \(file)", errno: error)
        }
        defer { try? fd.close() }
        let size = try statusSize(fd, file, image: image)
        guard size <= limit else { throw .malformed(image, file: file, detail: "\(size) bytes, more than \(limit) allowed") }
        return try readAll(fd, size: size, file: file, image: image)
    }

    private static func readAll(_ fd: FileDescriptor, size: UInt64, file: String, image: String) throws(ImageError) -> [UInt8] {
        let bytes: [UInt8]
        do {
            bytes = try Kernel.readAt(fd, offset: 0, count: Int(size))
        } catch {
            throw .io(image, operation: "read \(file)", errno: error)
        }
        guard bytes.count == Int(size) else { throw .truncated(image, file: file, detail: "\(bytes.count) bytes, expected \(size)") }
        return bytes
    }

    private struct VersionProbe: Decodable { var formatVersion: Int? }

    private static func readManifest(_ fd: FileDescriptor, digest: FileDigest, image: String, written: CheckpointManifest?) throws(ImageError) -> CheckpointManifest {
        let file = ImageFormat.manifestName
        guard digest.size <= ImageFormat.maxManifestBytes else {
            throw .malformed(image, file: file, detail: "\(digest.size) bytes, more than \(ImageFormat.maxManifestBytes) allowed")
        }
        let bytes = try readAll(fd, size: digest.size, file: file, image: image)
        guard Checksum.hex(Checksum.xxh64(bytes)) == digest.xxh64 else { throw .checksumMismatch(image, file: file, entry: nil) }
        if let written { return written }
        let decoder = JSONOutput.decoder()
        let probe: VersionProbe
        do {
            probe = try decoder.decode(VersionProbe.self, from: Data(bytes))
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
            throw .malformed(image, file: file, detail: "not a JSON object")
        } catch {
            // Foundation's own text for unparsable JSON (too deep, truncated…) is one line; keep it short.
            throw .malformed(image, file: file, detail: "not valid JSON")
        }
        guard let version = probe.formatVersion else { throw .malformed(image, file: file, detail: "no format_version") }
        guard CheckpointManifest.readableFormatVersions.contains(version) else { throw .unsupportedVersion(image, file: file, version: version) }
        do {
            return try decoder.decode(CheckpointManifest.self, from: Data(bytes))
        } catch let DecodingError.keyNotFound(key, _) {
            throw .malformed(image, file: file, detail: "missing \(key.stringValue)")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context), let DecodingError.dataCorrupted(context) {
            let at = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw .malformed(image, file: file, detail: "bad value at \(at.isEmpty ? "top level" : at)")
        } catch {
            throw .malformed(image, file: file, detail: "\(error)")
        }
    }

    /// Checks the manifest's identity fields and that mappings and their page ranges are sorted,
    /// disjoint and page-aligned, so that readers may binary-search them.
    private static func checkMappings(_ manifest: CheckpointManifest, image: String) throws(ImageError) {
        let file = ImageFormat.manifestName
        do {
            try checkHeader(manifest.header)
        } catch {
            throw .malformed(image, file: file, detail: "\(error)")
        }
        guard manifest.pageSize <= 1 << 30 else { throw .malformed(image, file: file, detail: "page size \(manifest.pageSize)") }
        switch manifest.kind {
        case .full where manifest.sequence != 0:
            throw .malformed(image, file: file, detail: "a full checkpoint with sequence \(manifest.sequence)")
        case .incremental where manifest.sequence < 1:
            throw .malformed(image, file: file, detail: "an incremental checkpoint with sequence \(manifest.sequence)")
        default: break
        }
        let page = UInt64(manifest.pageSize)
        var previousEnd: UInt64 = 0
        for (number, mapping) in manifest.mappings.enumerated() {
            guard mapping.start < mapping.end, mapping.start % page == 0, mapping.end % page == 0, mapping.start >= previousEnd else {
                throw .malformed(image, file: file, detail: "mapping \(number) is empty, unaligned, out of order or overlapping")
            }
            var rangeEnd = mapping.start
            for range in mapping.pages {
                guard range.start < range.end, range.start % page == 0, range.end % page == 0,
                      range.start >= rangeEnd, range.end <= mapping.end
                else { throw .malformed(image, file: file, detail: "mapping \(number) has an invalid page range") }
                guard !(range.state == .inherited && manifest.kind == .full) else {
                    throw .malformed(image, file: file, detail: "mapping \(number) has inherited pages in a full checkpoint")
                }
                rangeEnd = range.end
            }
            previousEnd = mapping.end
            if mapping.pages.contains(where: { $0.state == .cleanFile }) { try checkFileMapping(mapping, number: number, pageSize: manifest.pageSize, image: image) }
        }
    }

    /// A mapping with `clean_file` pages names its file by absolute path, maps a range of file
    /// offsets a reader can address (`off_t`), and, when it records the file's identity, lists
    /// one checksum per chunk of the mapping inside the file.
    private static func checkFileMapping(_ mapping: CheckpointMapping, number: Int, pageSize: Int, image: String) throws(ImageError) {
        let file = ImageFormat.manifestName
        guard let path = mapping.path, path.hasPrefix("/") else {
            throw .malformed(image, file: file, detail: "mapping \(number) has clean_file pages but no absolute file path")
        }
        let length = mapping.end - mapping.start
        guard length <= UInt64(Int64.max), mapping.offset <= UInt64(Int64.max) - length else {
            throw .malformed(image, file: file, detail: "mapping \(number) has file offset \(mapping.offset), beyond what a file can hold")
        }
        guard let identity = mapping.file else { return }
        let expected = MappedFile.chunkCount(offset: mapping.offset, length: length, size: identity.size, pageSize: pageSize)
        guard identity.chunkXxh64.count == expected,
              identity.chunkXxh64.allSatisfy({ $0.utf8.count == 16 && UInt64($0, radix: 16) != nil })
        else {
            throw .malformed(image, file: file, detail: "mapping \(number) lists \(identity.chunkXxh64.count) file chunk checksums, \(expected) expected")
        }
    }
}

/// An image and its ancestors, newest first: what a reader reconstructs memory from.
public struct CheckpointChain: Sendable {
    /// Newest first; the last one is a full checkpoint.
    public let images: [CheckpointImage]

    public var newest: CheckpointImage { images[0] }

    /// The bytes at `address` as the process held them at the newest checkpoint.
    ///
    /// For each page the newest manifest decides: a page outside every mapping is `notMapped`;
    /// `never_touched` pages read as zeros; `clean_file` pages are read from the mapped file if it
    /// is still the file and content recorded (`fileBytes`); `stored` and `inherited` pages come from the newest image in the chain
    /// whose index holds them, checked against their run checksum. A page with no recorded state,
    /// or recorded as stored but held by no image, is `notStored`.
    public func read(address: UInt64, length: Int) throws(ImageError) -> [UInt8] {
        guard length > 0 else { return [] }
        guard address <= UInt64.max - UInt64(length) else { throw .notMapped(address: UInt64.max) }
        let pageSize = UInt64(newest.manifest.pageSize)
        var result = [UInt8]()
        result.reserveCapacity(length)
        var cached: (image: Int, run: PageRun, bytes: [UInt8])?
        var cachedFile: (mapping: UInt64, chunk: Int, bytes: [UInt8])?
        var page = address - address % pageSize
        let end = address + UInt64(length)
        while page < end {
            let bytes = try pageBytes(page, pageSize: pageSize, cached: &cached, cachedFile: &cachedFile)
            let from = Int(max(address, page) - page)
            let to = Int(min(end, page + pageSize) - page)
            result.append(contentsOf: bytes[(bytes.startIndex + from)..<(bytes.startIndex + to)])
            page += pageSize
        }
        return result
    }

    private func pageBytes(_ page: UInt64, pageSize: UInt64,
                           cached: inout (image: Int, run: PageRun, bytes: [UInt8])?,
                           cachedFile: inout (mapping: UInt64, chunk: Int, bytes: [UInt8])?) throws(ImageError) -> ArraySlice<UInt8> {
        let mappings = newest.manifest.mappings
        guard let mapping = Self.find(page, in: mappings, start: \.start, end: \.end) else { throw .notMapped(address: page) }
        guard let range = Self.find(page, in: mapping.pages, start: \.start, end: \.end) else {
            throw .notStored(address: page, detail: "no page state is recorded for it in mapping \(mapping.path ?? "[anonymous]")")
        }
        switch range.state {
        case .neverTouched:
            return ArraySlice(repeating: 0, count: Int(pageSize))
        case .cleanFile:
            return try fileBytes(page, mapping: mapping, pageSize: pageSize, cached: &cachedFile)
        case .stored, .inherited:
            for (number, image) in images.enumerated() {
                guard let run = image.run(containing: page) else { continue }
                if cached?.image != number || cached?.run != run { cached = (number, run, try image.bytes(of: run)) }
                let at = Int(page - run.address)
                return cached!.bytes[at..<(at + Int(pageSize))]
            }
            throw .notStored(address: page, detail: "recorded as \(range.state.rawValue) but no image in the chain holds it")
        }
    }

    /// A `clean_file` page, from the file the mapping names only if it is the file recorded at
    /// the checkpoint (device, inode, size, modification time) and the chunk holding the page
    /// still has the recorded checksum — checked before any byte is returned.
    private func fileBytes(_ page: UInt64, mapping: CheckpointMapping, pageSize: UInt64,
                           cached: inout (mapping: UInt64, chunk: Int, bytes: [UInt8])?) throws(ImageError) -> ArraySlice<UInt8> {
        let chunkBytes = MappedFile.chunkBytes(pageSize: Int(pageSize))
        let number = Int((page - mapping.start) / chunkBytes)
        let within = Int((page - mapping.start) % chunkBytes)
        if cached?.mapping != mapping.start || cached?.chunk != number {
            do {
                let fd = try Self.openMappedFile(mapping)
                defer { try? fd.close() }
                cached = (mapping.start, number, try Self.fileChunk(fd, number, mapping: mapping, pageSize: Int(pageSize)))
            } catch {
                throw .notStored(address: page, detail: "clean_file page of \(mapping.path ?? "[no path]"), which is not read: \(error)")
            }
        }
        let chunk = cached!.bytes
        // Past the end of the file inside its last page the kernel shows zeros; a page wholly past it does not exist.
        guard within < chunk.count else {
            throw .notStored(address: page, detail: "clean_file page lies past the end of \(mapping.path ?? "[no path]")")
        }
        let bytes = chunk[within..<min(chunk.count, within + Int(pageSize))]
        return bytes + [UInt8](repeating: 0, count: Int(pageSize) - bytes.count)
    }

    /// Opens the file of a mapping with `clean_file` pages and checks it is the recorded one.
    static func openMappedFile(_ mapping: CheckpointMapping) throws(MappedFileRefusal) -> FileDescriptor {
        guard let identity = mapping.file else {
            throw MappedFileRefusal("the image records no identity for the file (written by a Mitosis that did not), so its bytes cannot be trusted")
        }
        let (fd, st) = try MappedFile.open(mapping.path ?? "")
        guard MappedFile.matches(st, identity) else {
            try? fd.close()
            throw MappedFileRefusal("it is not the file the checkpoint recorded (device, inode, size or modification time differ)")
        }
        return fd
    }

    /// Chunk `number` of the mapped range (empty when wholly past the end of the file), checked
    /// against the recorded checksum.
    static func fileChunk(_ fd: FileDescriptor, _ number: Int, mapping: CheckpointMapping, pageSize: Int) throws(MappedFileRefusal) -> [UInt8] {
        let identity = mapping.file!
        guard let range = MappedFile.chunkRange(UInt64(number), offset: mapping.offset, length: mapping.end - mapping.start,
                                                size: identity.size, pageSize: pageSize)
        else { return [] }
        let bytes: [UInt8]
        do { bytes = try Kernel.readAt(fd, offset: range.lowerBound, count: Int(range.count)) } catch { throw MappedFileRefusal("read failed: \(error)") }
        guard bytes.count == range.count, number < identity.chunkXxh64.count,
              Checksum.hex(Checksum.xxh64(bytes)) == identity.chunkXxh64[number]
        else { throw MappedFileRefusal("its content differs from the checkpoint's") }
        return bytes
    }

    /// Binary search in a sorted list of disjoint ranges.
    private static func find<T>(_ address: UInt64, in items: [T], start: KeyPath<T, UInt64>, end: KeyPath<T, UInt64>) -> T? {
        var low = 0, high = items.count
        while low < high {
            let mid = (low + high) / 2
            if items[mid][keyPath: end] <= address { low = mid + 1 } else { high = mid }
        }
        return low < items.count && items[low][keyPath: start] <= address ? items[low] : nil
    }
}

extension CheckpointChain {
    /// A chain from images already open, newest first, when each one's parent link names the
    /// next by id and the last is a full checkpoint; nil otherwise.
    package init?(linking images: [CheckpointImage]) {
        guard let last = images.last, last.manifest.kind == .full, last.manifest.parent == nil else { return nil }
        for (child, parent) in zip(images, images.dropFirst()) {
            guard child.manifest.parent?.id == parent.manifest.id, parent.manifest.sequence < child.manifest.sequence,
                  parent.manifest.pageSize == child.manifest.pageSize else { return nil }
        }
        self.init(images: images)
    }
}
