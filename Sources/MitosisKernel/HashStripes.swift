import CMitosis

/// XXH64's bulk loop in C (`mitosis_xxh64_stripes`): AVX-512 where the CPU has it, which Swift
/// code compiled for baseline x86-64 cannot use. `Checksum` (MitosisImage) keeps the rest of the
/// hash; this only feeds whole 32-byte stripes to its lanes.
package enum HashStripes {
    /// Feeds the whole 32-byte stripes of `bytes` (`bytes.count / 32` of them) to the four lanes
    /// of `a` and, when given, of `b`: the same bytes hashed twice, loaded once. `portable` takes
    /// the loop CPUs without AVX-512 run (for tests).
    package static func feed(_ a: inout (UInt64, UInt64, UInt64, UInt64), _ b: inout (UInt64, UInt64, UInt64, UInt64)?,
                             _ bytes: UnsafeRawBufferPointer, portable: Bool = false) {
        let loop = portable ? mitosis_xxh64_stripes_portable : mitosis_xxh64_stripes
        guard let base = bytes.baseAddress, bytes.count >= 32 else { return }
        let stripes = bytes.count / 32
        withUnsafeMutableBytes(of: &a) { first in
            let lanesA = first.baseAddress!.assumingMemoryBound(to: UInt64.self)
            if var second = b {
                withUnsafeMutableBytes(of: &second) { loop(lanesA, $0.baseAddress!.assumingMemoryBound(to: UInt64.self), base, stripes) }
                b = second
            } else {
                loop(lanesA, nil, base, stripes)
            }
        }
    }

    /// Whether `feed` runs on AVX-512 here.
    package static var vectorized: Bool { mitosis_xxh64_vectorized() != 0 }
}
