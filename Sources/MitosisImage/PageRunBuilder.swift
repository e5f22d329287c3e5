import MitosisKernel

/// Turns the pages a sink receives into the runs of `pages.index` and the bytes of `pages.data`:
/// contiguous pages written one after another join one run (up to `ImageFormat.maxRunPages`),
/// every run and the whole data file are hashed as they pass (both in one pass). Sinks that write the same pages
/// therefore produce byte-identical images.
///
/// With `compression`, a run's bytes are gathered until it ends and then handed over as one zstd
/// frame (or as they are, where the frame is no smaller): the run's checksum is of its bytes,
/// the data file's digest of the file's bytes, frames included.
package struct PageRunBuilder {
    package let pageSize: Int
    package let compression: PageCompression?
    private(set) var dataSize: UInt64 = 0
    private var runs: [PageRun] = []
    private var current: (run: PageRun, hasher: Checksum)?
    private var dataHasher = Checksum()
    /// The open run's bytes and the frame's room (compressed images only). A reference: a
    /// builder is copied only by the early-page path, which compressed images do not take.
    private let frames: RunCompressor?

    package init(pageSize: Int) {
        self.pageSize = pageSize
        compression = nil
        frames = nil
    }

    /// A builder of a compressed image's runs (`compression` nil: as `init(pageSize:)`).
    package init(pageSize: Int, compression: PageCompression?) throws(ImageError) {
        self.pageSize = pageSize
        self.compression = compression
        frames = compression == nil ? nil : try RunCompressor(capacity: ImageFormat.maxRunPages * pageSize)
    }

    /// Adds the pages at `address`, handing each piece of bytes to `emit` in data-file order,
    /// before hashing it.
    package mutating func add(address: UInt64, _ bytes: UnsafeRawBufferPointer,
                      emit: (UnsafeRawBufferPointer) throws(ImageError) -> Void) throws(ImageError) {
        try validateRun(address: address, count: bytes.count, pageSize: pageSize)
        let maxRun = UInt64(ImageFormat.maxRunPages * pageSize)
        var offset = 0
        while offset < bytes.count {
            let at = address + UInt64(offset)
            if let open = current, open.run.end != at || open.run.length == maxRun { try closeRun(emit: emit) }
            if current == nil { current = (PageRun(address: at, length: 0, dataOffset: dataSize, checksum: 0), Checksum()) }
            let count = Int(min(UInt64(bytes.count - offset), maxRun - current!.run.length))
            let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
            if let frames {
                frames.gather(piece, at: Int(current!.run.length))
                current!.hasher.update(piece)
            } else {
                // Emitted first: a sink that writes on another thread writes while this hashes.
                try emit(piece)
                // The run's checksum and the data file's digest in one pass over the bytes.
                Checksum.update(&current!.hasher, &dataHasher, piece)
                dataSize += UInt64(count)
            }
            current!.run.length += UInt64(count)
            offset += count
        }
    }

    private mutating func closeRun(emit: (UnsafeRawBufferPointer) throws(ImageError) -> Void) throws(ImageError) {
        guard var open = current else { return }
        open.run.checksum = open.hasher.finalize()
        if let frames {
            let stored = frames.frame(length: Int(open.run.length))
            try emit(stored)
            dataHasher.update(stored)
            open.run.storedLength = UInt64(stored.count)
            dataSize += UInt64(stored.count)
        }
        runs.append(open.run)
        current = nil
    }

    /// Ends the last run (handing a compressed image's last frame to `emit`) and returns the
    /// index (sorted by address) and the data file's digest; throws if two runs overlap.
    package mutating func finish(emit: (UnsafeRawBufferPointer) throws(ImageError) -> Void = { _ throws(ImageError) in })
        throws(ImageError) -> (index: [UInt8], runs: [PageRun], data: FileDigest) {
        try closeRun(emit: emit)
        runs.sort { $0.address < $1.address }
        for (a, b) in zip(runs, runs.dropFirst()) where a.end > b.address {
            throw .invalidPages("runs at 0x\(String(a.address, radix: 16)) and 0x\(String(b.address, radix: 16)) overlap")
        }
        return (ImageFormat.encodeIndex(pageSize: pageSize, runs: runs, compression: compression), runs,
                FileDigest(size: dataSize, xxh64: dataHasher.finalize()))
    }

    /// `draft` completed with the page index summary and the digests of the index and data files.
    package func complete(_ draft: CheckpointManifest, runs: [PageRun], index: FileDigest, data: FileDigest) -> CheckpointManifest {
        var manifest = draft
        manifest.formatVersion = CheckpointManifest.currentFormatVersion
        let pageBytes = runs.reduce(UInt64(0)) { $0 + $1.length }
        manifest.pageIndex = PageIndexSummary(runs: runs.count, pages: Int(pageBytes / UInt64(pageSize)), bytes: data.size)
        manifest.files = [ImageFormat.indexName: index, ImageFormat.dataName: data]
        return manifest
    }
}

/// The open run's bytes, gathered, and the room its zstd frame is written to.
private final class RunCompressor {
    private let run: UnsafeMutableRawBufferPointer
    private let frame: UnsafeMutableRawBufferPointer
    private let compressor: ZstdCompressor

    init(capacity: Int) throws(ImageError) {
        do {
            compressor = try ZstdCompressor()
        } catch {
            throw .io("zstd", operation: "create a compression context", errno: error)
        }
        run = .allocate(byteCount: capacity, alignment: 4096)
        // A frame must be smaller than the run to be kept: no more room is needed.
        frame = .allocate(byteCount: capacity, alignment: 4096)
    }

    deinit {
        run.deallocate()
        frame.deallocate()
    }

    func gather(_ piece: UnsafeRawBufferPointer, at offset: Int) {
        UnsafeMutableRawBufferPointer(rebasing: run[offset..<(offset + piece.count)]).copyMemory(from: piece)
    }

    /// The run's first `length` bytes as stored: its zstd frame, or the bytes where the frame
    /// would be no smaller. Valid until the next run is gathered.
    func frame(length: Int) -> UnsafeRawBufferPointer {
        let bytes = UnsafeRawBufferPointer(rebasing: run[..<length])
        let room = UnsafeMutableRawBufferPointer(rebasing: frame[..<(length - 1)])
        if let written = compressor.compress(bytes, into: room) { return UnsafeRawBufferPointer(rebasing: frame[..<written]) }
        return bytes
    }
}
