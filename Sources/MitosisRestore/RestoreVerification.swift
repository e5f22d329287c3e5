import MitosisImage
import MitosisKernel
import MitosisModel

/// Checks of a restored process against its image, for `Restorer.restore(verify:)` and tests:
/// ZDTM-style, what the kernel shows must equal what the image recorded.
public enum RestoreVerification {
    /// The pages (addresses) of `pid` whose bytes differ from the chain's, over every mapping
    /// the image restores. Empty when memory is byte-exact. Mappings without read permission
    /// (guard pages) are skipped: `process_vm_readv` cannot read them, so no image holds their bytes.
    public static func differingPages(pid: Int32, chain: CheckpointChain) throws -> [UInt64] {
        let pageSize = chain.newest.manifest.pageSize
        var differing: [UInt64] = []
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: pageSize)
        defer { buffer.deallocate() }
        for mapping in chain.newest.manifest.mappings where !RestorePlan.isKernelProvided(mapping) && !mapping.pages.isEmpty && mapping.perms.hasPrefix("r") {
            var at = mapping.start
            while at < mapping.end {
                let count = Int(min(UInt64(buffer.count), mapping.end - at))
                let expected = try chain.read(address: at, length: count)
                let read = try Kernel.readMemory(pid: pid, address: at, into: UnsafeMutableRawBufferPointer(rebasing: buffer[..<count]))
                expected.withUnsafeBytes { expected in
                    for page in stride(from: 0, to: count, by: pageSize) {
                        let same = page + pageSize <= read
                            && Kernel.bytesEqual(UnsafeRawBufferPointer(rebasing: expected[page..<(page + pageSize)]),
                                                 UnsafeRawBufferPointer(rebasing: buffer[page..<(page + pageSize)]))
                        if !same { differing.append(at + UInt64(page)) }
                    }
                }
                at += UInt64(count)
            }
        }
        return differing
    }

    /// Differences between the mappings of `pid` and the image's, after joining neighbours the
    /// kernel may or may not have merged (same permissions and backing, contiguous). Offsets are
    /// compared for file mappings only: an anonymous mapping's offset records its history.
    public static func mappingDifferences(pid: Int32, manifest: CheckpointManifest) throws -> [String] {
        let live = ProcMaps.parse(String(decoding: try Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self))
        var image = manifest.mappings.map { Area(start: $0.start, end: $0.end, perms: $0.perms, path: $0.path, offset: $0.kind == "file" ? $0.offset : nil) }
        // The vDSO and its data pages are not checkpointed mappings; the record says where they were.
        if let vdso = manifest.restore?.vdso {
            for (range, name, perms) in [(vdso.vvar, "[vvar]", "r--p"), (vdso.vvarVclock, "[vvar_vclock]", "r--p"), (vdso.vdso, "[vdso]", "r-xp")] {
                if let range { image.append(Area(start: range.start, end: range.start + range.length, perms: perms, path: name, offset: nil)) }
            }
        }
        let expected = join(image)
        // [vsyscall] lies above user space, the same in every process.
        let actual = join(live.filter { $0.kind != .vsyscall }.map { Area(start: $0.start, end: $0.end, perms: $0.perms, path: $0.path, offset: $0.kind == .file ? $0.offset : nil) })
        let missing = expected.filter { !actual.contains($0) }.map { "image has \($0), process does not" }
        let extra = actual.filter { !expected.contains($0) }.map { "process has \($0), image does not" }
        return missing + extra
    }

    struct Area: Equatable, CustomStringConvertible {
        var start, end: UInt64
        var perms: String
        var path: String?
        var offset: UInt64?
        var description: String {
            "0x\(String(start, radix: 16))-0x\(String(end, radix: 16)) \(perms) \(offset.map { "+0x" + String($0, radix: 16) } ?? "") \(path ?? "[anonymous]")"
        }
    }

    static func join(_ areas: [Area]) -> [Area] {
        var result: [Area] = []
        for area in areas.sorted(by: { $0.start < $1.start }) {
            if var last = result.last, last.end == area.start, last.perms == area.perms, last.path == area.path,
               last.offset.map({ $0 + (last.end - last.start) }) == area.offset {
                last.end = area.end
                result[result.count - 1] = last
            } else {
                result.append(area)
            }
        }
        return result
    }
}
