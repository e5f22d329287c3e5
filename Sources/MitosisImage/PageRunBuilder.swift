/// Turns the pages a sink receives into the runs of `pages.index` and the bytes of `pages.data`:
/// contiguous pages written one after another join one run (up to `ImageFormat.maxRunPages`),
/// every run and the whole data file are hashed as they pass (both in one pass). Sinks that write the same pages
/// therefore produce byte-identical images.
package struct PageRunBuilder {
    package let pageSize: Int
    private(set) var dataSize: UInt64 = 0
    private var runs: [PageRun] = []
    private var current: (run: PageRun, hasher: Checksum)?
    private var dataHasher = Checksum()

    package init(pageSize: Int) { self.pageSize = pageSize }

    /// Adds the pages at `address`, handing each piece of bytes to `emit` in data-file order,
    /// before hashing it.
    package mutating func add(address: UInt64, _ bytes: UnsafeRawBufferPointer,
                      emit: (UnsafeRawBufferPointer) throws(ImageError) -> Void) throws(ImageError) {
        try validateRun(address: address, count: bytes.count, pageSize: pageSize)
        let maxRun = UInt64(ImageFormat.maxRunPages * pageSize)
        var offset = 0
        while offset < bytes.count {
            let at = address + UInt64(offset)
            if let open = current, open.run.end != at || open.run.length == maxRun { closeRun() }
            if current == nil { current = (PageRun(address: at, length: 0, dataOffset: dataSize, checksum: 0), Checksum()) }
            let count = Int(min(UInt64(bytes.count - offset), maxRun - current!.run.length))
            let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
            // Emitted first: a sink that writes on another thread writes while this hashes.
            try emit(piece)
            // The run's checksum and the data file's digest in one pass over the bytes.
            Checksum.update(&current!.hasher, &dataHasher, piece)
            current!.run.length += UInt64(count)
            dataSize += UInt64(count)
            offset += count
        }
    }

    private mutating func closeRun() {
        guard var open = current else { return }
        open.run.checksum = open.hasher.finalize()
        runs.append(open.run)
        current = nil
    }

    /// Ends the last run and returns the index (sorted by address) and the data file's digest;
    /// throws if two runs overlap.
    package mutating func finish() throws(ImageError) -> (index: [UInt8], runs: [PageRun], data: FileDigest) {
        closeRun()
        runs.sort { $0.address < $1.address }
        for (a, b) in zip(runs, runs.dropFirst()) where a.end > b.address {
            throw .invalidPages("runs at 0x\(String(a.address, radix: 16)) and 0x\(String(b.address, radix: 16)) overlap")
        }
        return (ImageFormat.encodeIndex(pageSize: pageSize, runs: runs), runs, FileDigest(size: dataSize, xxh64: dataHasher.finalize()))
    }

    /// `draft` completed with the page index summary and the digests of the index and data files.
    package func complete(_ draft: CheckpointManifest, runs: [PageRun], index: FileDigest, data: FileDigest) -> CheckpointManifest {
        var manifest = draft
        manifest.formatVersion = CheckpointManifest.currentFormatVersion
        manifest.pageIndex = PageIndexSummary(runs: runs.count, pages: Int(data.size / UInt64(pageSize)), bytes: data.size)
        manifest.files = [ImageFormat.indexName: index, ImageFormat.dataName: data]
        return manifest
    }
}
