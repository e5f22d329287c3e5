/// One contiguous run of stored pages: an entry of `pages.index`.
public struct PageRun: Equatable, Sendable {
    /// First address of the run (page-aligned).
    public var address: UInt64
    /// Length in bytes (whole pages).
    public var length: UInt64
    /// Where the run's bytes start in `pages.data`.
    public var dataOffset: UInt64
    /// XXH64 of the run's bytes (uncompressed: what a reader hands out, see `storedLength`).
    public var checksum: UInt64
    /// Bytes the run takes in `pages.data`: `length`, or less for a run stored as one zstd frame
    /// in a compressed image (`PageCompression`).
    public var storedLength: UInt64

    public init(address: UInt64, length: UInt64, dataOffset: UInt64, checksum: UInt64, storedLength: UInt64? = nil) {
        self.address = address
        self.length = length
        self.dataOffset = dataOffset
        self.checksum = checksum
        self.storedLength = storedLength ?? length
    }

    public var end: UInt64 { address + length }
    /// Whether the run's bytes in `pages.data` are a zstd frame (else the bytes themselves).
    public var isCompressed: Bool { storedLength != length }
}

/// How the page data of an image is compressed (`mitosis dump --compress`); none by default.
public enum PageCompression: String, Sendable, Codable, CaseIterable {
    /// Each run a Zstandard frame at level 1, or its bytes as they are where that is no smaller.
    case zstd

    /// Its code in the header of a version 3 `pages.index`.
    var code: UInt64 {
        switch self {
        case .zstd: 1
        }
    }
}

/// Names, sizes and byte layouts of an image directory (Docs/image-format.md).
package enum ImageFormat {
    package static let manifestName = "manifest.json"
    package static let indexName = "pages.index"
    package static let dataName = "pages.data"
    package static let commitName = "COMMIT"
    package static let incompleteName = "INCOMPLETE"
    /// Files the commit record lists, in its order.
    package static let committedFiles = [manifestName, indexName, dataName]

    package static let indexMagic = Array("MITOSIDX".utf8)
    package static let indexHeaderSize = 32
    package static let indexEntrySize = 32
    /// Entries of a compressed image's index (version 3) also hold the run's stored length.
    package static let compressedIndexEntrySize = 40
    /// The version of `pages.index` in compressed images: older readers refuse it by name
    /// rather than read zstd frames as pages. Uncompressed images keep version 2.
    package static let compressedIndexVersion: UInt32 = 3
    package static let indexTrailerSize = 8
    /// Runs are split at this many pages so that reading one page verifies at most this much.
    package static let maxRunPages = 256
    /// Largest manifest, page index or commit record a reader loads.
    package static let maxManifestBytes: UInt64 = 256 << 20
    package static let maxIndexBytes: UInt64 = 256 << 20
    package static let maxCommitBytes: UInt64 = 64 << 10
    package static let commitMagic = "mitosis-checkpoint"

    /// The temporary sibling a checkpoint is written in before it is renamed to `name`.
    package static func partialName(for name: String, id: String) -> String { ".\(name).partial-\(id)" }

    // MARK: pages.index

    package static func encodeIndex(pageSize: Int, runs: [PageRun], compression: PageCompression? = nil) -> [UInt8] {
        var bytes = indexMagic
        let entrySize = compression == nil ? indexEntrySize : compressedIndexEntrySize
        bytes.reserveCapacity(indexHeaderSize + runs.count * entrySize + indexTrailerSize)
        bytes.appendLittleEndian(compression == nil ? UInt32(CheckpointManifest.currentFormatVersion) : compressedIndexVersion)
        bytes.appendLittleEndian(UInt32(pageSize))
        bytes.appendLittleEndian(UInt64(runs.count))
        bytes.appendLittleEndian(compression?.code ?? 0)
        for run in runs {
            bytes.appendLittleEndian(run.address)
            bytes.appendLittleEndian(run.length)
            bytes.appendLittleEndian(run.dataOffset)
            if compression != nil { bytes.appendLittleEndian(run.storedLength) }
            bytes.appendLittleEndian(run.checksum)
        }
        bytes.appendLittleEndian(Checksum.xxh64(bytes))
        return bytes
    }

    /// Parses and checks `pages.index` against `pageSize` and the size of `pages.data`: every
    /// count, length and offset is bounded before it is used.
    package static func decodeIndex(_ bytes: [UInt8], image: String, pageSize: Int, dataSize: UInt64) throws(ImageError) -> [PageRun] {
        try decodeIndexAndCompression(bytes, image: image, pageSize: pageSize, dataSize: dataSize).runs
    }

    /// The entry size of an index of `version` (read from its header), nil for an unknown one.
    package static func entrySize(ofIndexVersion version: UInt32) -> Int? {
        if version == compressedIndexVersion { return compressedIndexEntrySize }
        return CheckpointManifest.readableFormatVersions.contains(Int(version)) ? indexEntrySize : nil
    }

    /// As `decodeIndex`, also returning how the runs are compressed (version 3 indexes).
    package static func decodeIndexAndCompression(_ bytes: [UInt8], image: String, pageSize: Int,
                                                  dataSize: UInt64) throws(ImageError) -> (runs: [PageRun], compression: PageCompression?) {
        let file = indexName
        guard bytes.count >= indexHeaderSize + indexTrailerSize else {
            throw .truncated(image, file: file, detail: "\(bytes.count) bytes, smaller than header and trailer")
        }
        guard Array(bytes[0..<8]) == indexMagic else { throw .malformed(image, file: file, detail: "bad magic") }
        let version = bytes.littleEndianUInt32(at: 8)
        guard let entrySize = entrySize(ofIndexVersion: version) else {
            throw .unsupportedVersion(image, file: file, version: Int(version))
        }
        let body = bytes.count - indexTrailerSize
        guard Checksum.xxh64(bytes[0..<body]) == bytes.littleEndianUInt64(at: body) else {
            throw .checksumMismatch(image, file: file, entry: nil)
        }
        guard bytes.littleEndianUInt32(at: 12) == pageSize else {
            throw .malformed(image, file: file, detail: "page size \(bytes.littleEndianUInt32(at: 12)) differs from the manifest's \(pageSize)")
        }
        let compression: PageCompression?
        if version == compressedIndexVersion {
            guard let known = PageCompression.allCases.first(where: { $0.code == bytes.littleEndianUInt64(at: 24) }) else {
                throw .malformed(image, file: file, detail: "unknown compression \(bytes.littleEndianUInt64(at: 24))")
            }
            compression = known
        } else {
            guard bytes.littleEndianUInt64(at: 24) == 0 else { throw .malformed(image, file: file, detail: "reserved header field is not 0") }
            compression = nil
        }
        let count = bytes.littleEndianUInt64(at: 16)
        let room = UInt64(body - indexHeaderSize)
        guard count <= room / UInt64(entrySize), count * UInt64(entrySize) == room else {
            throw .truncated(image, file: file, detail: "header announces \(count) entries, file holds \(room) bytes of entries")
        }
        var runs: [PageRun] = []
        runs.reserveCapacity(Int(count))
        var total: UInt64 = 0
        for index in 0..<Int(count) {
            let at = indexHeaderSize + index * entrySize
            let stored = compression == nil ? nil : bytes.littleEndianUInt64(at: at + 24)
            let run = PageRun(address: bytes.littleEndianUInt64(at: at), length: bytes.littleEndianUInt64(at: at + 8),
                              dataOffset: bytes.littleEndianUInt64(at: at + 16), checksum: bytes.littleEndianUInt64(at: entrySize - 8 + at),
                              storedLength: stored)
            let page = UInt64(pageSize)
            guard run.length > 0, run.length % page == 0, run.address % page == 0,
                  run.address <= UInt64.max - run.length
            else { throw .malformed(image, file: file, detail: "entry \(index) is not a page-aligned run of whole pages") }
            // A longer run would make reading one page load all of it (the writer splits at this size).
            guard run.length <= UInt64(maxRunPages) * page else {
                throw .malformed(image, file: file, detail: "entry \(index) is longer than \(maxRunPages) pages")
            }
            // A frame is never longer than the run (else the bytes are stored as they are), never empty.
            guard run.storedLength > 0, run.storedLength <= run.length else {
                throw .malformed(image, file: file, detail: "entry \(index) stores \(run.storedLength) bytes for a run of \(run.length)")
            }
            guard run.dataOffset <= dataSize, run.storedLength <= dataSize - run.dataOffset else {
                throw .malformed(image, file: file, detail: "entry \(index) points past the end of \(dataName)")
            }
            if let previous = runs.last, run.address < previous.end {
                throw .malformed(image, file: file, detail: "entry \(index) is out of order or overlaps entry \(index - 1)")
            }
            total += run.storedLength
            runs.append(run)
        }
        guard total == dataSize else {
            throw .malformed(image, file: file, detail: "entries cover \(total) bytes, \(dataName) holds \(dataSize)")
        }
        // Equal totals and disjoint data ranges mean every byte of pages.data belongs to exactly one run.
        let byOffset = runs.sorted { $0.dataOffset < $1.dataOffset }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) where a.dataOffset + a.storedLength > b.dataOffset {
            throw .malformed(image, file: file, detail: "entries share bytes of \(dataName)")
        }
        return (runs, compression)
    }

    // MARK: COMMIT

    /// The commit record: the last file written, listing every other file's size and checksum,
    /// and ending with a checksum of itself.
    package static func encodeCommit(id: String, files: [(name: String, digest: FileDigest)]) -> [UInt8] {
        var text = "\(commitMagic) \(CheckpointManifest.currentFormatVersion)\nid \(id)\n"
        for file in files { text += "file \(file.name) \(file.digest.size) \(file.digest.xxh64)\n" }
        var bytes = Array(text.utf8)
        bytes += Array("end \(Checksum.hex(Checksum.xxh64(bytes)))\n".utf8)
        return bytes
    }

    package static func decodeCommit(_ bytes: [UInt8], image: String) throws(ImageError) -> (id: String, files: [String: FileDigest]) {
        let file = commitName
        // Printable ASCII only: then characters and bytes count alike, and no decoding can shift the checksum's span.
        guard bytes.allSatisfy({ $0 == 0x0A || (0x20..<0x7F).contains($0) }) else {
            throw .malformed(image, file: file, detail: "not printable ASCII text")
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let first = lines.first, first.hasPrefix(commitMagic + " ") else { throw .malformed(image, file: file, detail: "bad magic") }
        guard let version = Int(first.dropFirst(commitMagic.count + 1)) else { throw .malformed(image, file: file, detail: "bad version line") }
        guard CheckpointManifest.readableFormatVersions.contains(Int(version)) else { throw .unsupportedVersion(image, file: file, version: version) }
        guard text.hasSuffix("\n"), lines.count >= 3, lines[lines.count - 2].hasPrefix("end ") else {
            throw .truncated(image, file: file, detail: "no end line")
        }
        let endLine = lines[lines.count - 2]
        let covered = bytes.count - endLine.utf8.count - 1
        guard Checksum.hex(Checksum.xxh64(bytes[0..<covered])) == endLine.dropFirst(4) else {
            throw .checksumMismatch(image, file: file, entry: nil)
        }
        var id: String?
        var files: [String: FileDigest] = [:]
        for line in lines[1..<(lines.count - 2)] {
            let fields = line.split(separator: " ")
            if fields.count == 2, fields[0] == "id" {
                id = String(fields[1])
            } else if fields.count == 4, fields[0] == "file", let size = UInt64(fields[2]), fields[3].count == 16,
                      let sum = UInt64(fields[3], radix: 16) {
                files[String(fields[1])] = FileDigest(size: size, xxh64: sum)
            } else {
                throw .malformed(image, file: file, detail: "unexpected line '\(line.prefix(80))'")
            }
        }
        guard let id else { throw .malformed(image, file: file, detail: "no id line") }
        for name in committedFiles where files[name] == nil { throw .malformed(image, file: file, detail: "does not list \(name)") }
        return (id, files)
    }
}

extension Array where Element == UInt8 {
    package mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// The little-endian integer at `offset`; the caller has checked the bounds.
    package func littleEndianUInt64(at offset: Int) -> UInt64 {
        withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
    }

    package func littleEndianUInt32(at offset: Int) -> UInt32 {
        withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }
}
