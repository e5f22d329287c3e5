import Foundation
import Glibc
import SystemPackage
import MitosisKernel
import MitosisModel

/// A committed checkpoint image opened for reading (Docs/image-format.md).
///
/// Opening never trusts the directory: the commit record's own checksum, the size and checksum
/// of the manifest and page index, and every count, length and offset are checked before use,
/// so damaged, truncated or hostile images are reported as `ImageError`s. The page data is
/// checked run by run as it is read, and in full by `verify()`.
public final class CheckpointImage: Sendable {
    /// The image directory as given.
    public let path: String
    public let manifest: CheckpointManifest
    /// The page index: runs sorted by address, disjoint.
    public let runs: [PageRun]
    private let commitDigests: [String: FileDigest]
    private let data: FileDescriptor

    private init(path: String, manifest: CheckpointManifest, runs: [PageRun], commitDigests: [String: FileDigest], data: FileDescriptor) {
        self.path = path
        self.manifest = manifest
        self.runs = runs
        self.commitDigests = commitDigests
        self.data = data
    }

    deinit { try? data.close() }

    /// Pages stored in this image itself, parents excluded.
    public var storedPages: Int { manifest.pageIndex.pages }

    /// Opens and checks the image at `path` (everything but the page data's full checksum).
    public static func open(_ path: String) throws(ImageError) -> CheckpointImage {
        let directory: FileDescriptor
        do {
            directory = try Kernel.openAt(nil, path, flags: O_RDONLY | O_DIRECTORY)
        } catch .notDirectory {
            throw .notAnImage(path)
        } catch {
            throw .io(path, operation: "open", errno: error)
        }
        defer { try? directory.close() }
        if let marker = try? Kernel.openAt(directory, ImageFormat.incompleteName, flags: O_RDONLY | O_NOFOLLOW) {
            let note = (try? Kernel.readAt(marker, offset: 0, count: 4096)) ?? []
            try? marker.close()
            let reason = String(decoding: note, as: UTF8.self).trimmingCharacters(in: " \n\t")
            throw .incomplete(path, reason: reason.isEmpty ? "no reason recorded" : reason)
        }
        let name = path.split(separator: "/").last.map(String.init) ?? path
        if name.hasPrefix("."), name.contains(".partial-") {
            throw .incomplete(path, reason: "written completely but never renamed into place")
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
        var keepData = false
        defer { for (name, fd) in files where !(keepData && name == ImageFormat.dataName) { try? fd.close() } }
        for file in ImageFormat.committedFiles {
            let fd = try openCommitted(directory, file, image: path)
            files[file] = fd
            let size = try statusSize(fd, file, image: path)
            let expected = commit.files[file]!.size
            guard size == expected else {
                throw .truncated(path, file: file, detail: "\(size) bytes, the commit record says \(expected)")
            }
        }
        let manifest = try readManifest(files[ImageFormat.manifestName]!, digest: commit.files[ImageFormat.manifestName]!, image: path)
        guard manifest.id == commit.id else {
            throw ImageError.malformed(path, file: ImageFormat.manifestName, detail: "id \(manifest.id) differs from the commit record's \(commit.id)")
        }
        for file in [ImageFormat.indexName, ImageFormat.dataName] where manifest.files[file] != commit.files[file] {
            throw ImageError.malformed(path, file: ImageFormat.manifestName, detail: "its digest of \(file) differs from the commit record's")
        }
        try checkMappings(manifest, image: path)
        let dataSize = commit.files[ImageFormat.dataName]!.size
        let indexDigest = commit.files[ImageFormat.indexName]!
        // Every entry stores at least one page, so a sound index is never larger than this.
        let indexLimit = UInt64(ImageFormat.indexHeaderSize + ImageFormat.indexTrailerSize)
            + (dataSize / UInt64(manifest.pageSize)) * UInt64(ImageFormat.indexEntrySize)
        guard indexDigest.size <= indexLimit else {
            throw ImageError.malformed(path, file: ImageFormat.indexName, detail: "\(indexDigest.size) bytes is more than \(dataSize) bytes of pages need")
        }
        let indexBytes = try readAll(files[ImageFormat.indexName]!, size: indexDigest.size, file: ImageFormat.indexName, image: path)
        guard Checksum.hex(Checksum.xxh64(indexBytes)) == indexDigest.xxh64 else {
            throw ImageError.checksumMismatch(path, file: ImageFormat.indexName, entry: nil)
        }
        let runs = try ImageFormat.decodeIndex(indexBytes, image: path, pageSize: manifest.pageSize, dataSize: dataSize)
        guard runs.count == manifest.pageIndex.runs, dataSize == manifest.pageIndex.bytes,
              UInt64(manifest.pageIndex.pages) * UInt64(manifest.pageSize) == dataSize
        else {
            throw ImageError.malformed(path, file: ImageFormat.manifestName, detail: "its page index summary differs from \(ImageFormat.indexName)")
        }
        keepData = true
        return CheckpointImage(path: path, manifest: manifest, runs: runs, commitDigests: commit.files, data: files[ImageFormat.dataName]!)
    }

    // MARK: Chain

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
        guard parent.manifest.sequence + 1 == manifest.sequence else {
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
        var fileHasher = Checksum()
        // The runs tile pages.data exactly (checked at open), so reading them in data order hashes the file.
        for (number, run) in runs.enumerated().sorted(by: { $0.element.dataOffset < $1.element.dataOffset }) {
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
        while true {
            guard seen.insert(current.manifest.id).inserted else { return problems + [.chainCycle(path)] }
            problems += current.verify()
            do {
                guard let parent = try current.parent() else { return problems }
                current = parent
            } catch {
                return problems + [error]
            }
        }
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
            if let last = result.last, last.1 == range.0 { result[result.count - 1].1 = range.1 } else { result.append(range) }
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

    /// A run's bytes, checked against its checksum.
    package func bytes(of run: PageRun) throws(ImageError) -> [UInt8] {
        let bytes: [UInt8]
        do {
            bytes = try Kernel.readAt(data, offset: run.dataOffset, count: Int(run.length))
        } catch {
            throw .io(path, operation: "read \(ImageFormat.dataName)", errno: error)
        }
        let number = runs.firstIndex(of: run)
        guard bytes.count == Int(run.length) else { throw .truncated(path, file: ImageFormat.dataName, detail: "ends inside entry \(number ?? -1)") }
        guard Checksum.xxh64(bytes) == run.checksum else { throw .checksumMismatch(path, file: ImageFormat.dataName, entry: number) }
        return bytes
    }

    // MARK: Opening helpers

    private static func openCommitted(_ directory: FileDescriptor, _ file: String, image: String) throws(ImageError) -> FileDescriptor {
        do {
            return try Kernel.openAt(directory, file, flags: O_RDONLY | O_NOFOLLOW)
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
            fd = try Kernel.openAt(directory, file, flags: O_RDONLY | O_NOFOLLOW)
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

    private static func readManifest(_ fd: FileDescriptor, digest: FileDigest, image: String) throws(ImageError) -> CheckpointManifest {
        let file = ImageFormat.manifestName
        guard digest.size <= ImageFormat.maxManifestBytes else {
            throw .malformed(image, file: file, detail: "\(digest.size) bytes, more than \(ImageFormat.maxManifestBytes) allowed")
        }
        let bytes = try readAll(fd, size: digest.size, file: file, image: image)
        guard Checksum.hex(Checksum.xxh64(bytes)) == digest.xxh64 else { throw .checksumMismatch(image, file: file, entry: nil) }
        let decoder = JSONOutput.decoder()
        let probe = try? decoder.decode(VersionProbe.self, from: Data(bytes))
        guard let version = probe?.formatVersion else { throw .malformed(image, file: file, detail: "no format_version") }
        guard version == CheckpointManifest.currentFormatVersion else { throw .unsupportedVersion(image, file: file, version: version) }
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
                rangeEnd = range.end
            }
            previousEnd = mapping.end
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
    /// `never_touched` pages read as zeros; `clean_file` pages are read from the mapped file
    /// (as it is now); `stored` and `inherited` pages come from the newest image in the chain
    /// whose index holds them, checked against their run checksum. A page with no recorded state,
    /// or recorded as stored but held by no image, is `notStored`.
    public func read(address: UInt64, length: Int) throws(ImageError) -> [UInt8] {
        guard length > 0 else { return [] }
        guard address <= UInt64.max - UInt64(length) else { throw .notMapped(address: UInt64.max) }
        let pageSize = UInt64(newest.manifest.pageSize)
        var result = [UInt8]()
        result.reserveCapacity(length)
        var cached: (image: Int, run: PageRun, bytes: [UInt8])?
        var page = address - address % pageSize
        let end = address + UInt64(length)
        while page < end {
            let bytes = try pageBytes(page, pageSize: pageSize, cached: &cached)
            let from = Int(max(address, page) - page)
            let to = Int(min(end, page + pageSize) - page)
            result.append(contentsOf: bytes[(bytes.startIndex + from)..<(bytes.startIndex + to)])
            page += pageSize
        }
        return result
    }

    private func pageBytes(_ page: UInt64, pageSize: UInt64,
                           cached: inout (image: Int, run: PageRun, bytes: [UInt8])?) throws(ImageError) -> ArraySlice<UInt8> {
        let mappings = newest.manifest.mappings
        guard let mapping = Self.find(page, in: mappings, start: \.start, end: \.end) else { throw .notMapped(address: page) }
        guard let range = Self.find(page, in: mapping.pages, start: \.start, end: \.end) else {
            throw .notStored(address: page, detail: "no page state is recorded for it in mapping \(mapping.path ?? "[anonymous]")")
        }
        switch range.state {
        case .neverTouched:
            return ArraySlice(repeating: 0, count: Int(pageSize))
        case .cleanFile:
            return try fileBytes(page, mapping: mapping, pageSize: pageSize)
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

    private func fileBytes(_ page: UInt64, mapping: CheckpointMapping, pageSize: UInt64) throws(ImageError) -> ArraySlice<UInt8> {
        guard let path = mapping.path, path.hasPrefix("/") else {
            throw .notStored(address: page, detail: "recorded as clean_file but its mapping has no file path")
        }
        var bytes: [UInt8]
        do {
            let fd = try Kernel.openAt(nil, path, flags: O_RDONLY)
            defer { try? fd.close() }
            bytes = try Kernel.readAt(fd, offset: mapping.offset + (page - mapping.start), count: Int(pageSize))
        } catch {
            throw .notStored(address: page, detail: "clean_file page of \(path), which cannot be read: \(error)")
        }
        // Past the end of the file inside its last page the kernel shows zeros; a page wholly past it does not exist.
        guard !bytes.isEmpty else { throw .notStored(address: page, detail: "clean_file page lies past the end of \(path)") }
        bytes += [UInt8](repeating: 0, count: Int(pageSize) - bytes.count)
        return bytes[...]
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
