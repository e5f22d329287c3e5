import CMitosis
import SystemPackage

/// Zstandard (libzstd) for the optional compression of a checkpoint's page data: one frame per
/// run of pages, at a fast level (Docs/image-format.md says why zstd and which level).
package final class ZstdCompressor {
    /// Level 1: on a redis heap 4.45× smaller at ~230–260 MB/s, where LZ4 gave 2.6× at ~350–390
    /// MB/s and zstd level 3 4.5× at ~150 MB/s (1 MiB blocks, Docs/performance.md).
    package static let level: Int32 = 1
    private let context: UnsafeMutableRawPointer

    package init() throws(Errno) {
        guard let context = mitosis_zstd_cctx_create() else { throw .noMemory }
        self.context = context
    }

    deinit { mitosis_zstd_cctx_free(context) }

    /// Compresses `input` into `output`; nil when the frame would not fit there (an output no
    /// larger than the input then means: store the bytes as they are).
    package func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        guard let source = input.baseAddress, let target = output.baseAddress else { return nil }
        let written = mitosis_zstd_compress(context, target, output.count, source, input.count, Self.level)
        return written == 0 ? nil : written
    }

    /// Decompresses one frame `input` into `output`, writing nothing past its end; nil when the
    /// frame is damaged, hostile, or decompresses to more than `output` holds.
    package static func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        guard let source = input.baseAddress, let target = output.baseAddress else { return nil }
        let written = mitosis_zstd_decompress(target, output.count, source, input.count)
        return written < 0 ? nil : written  // (size_t)-1, imported as Int
    }
}
