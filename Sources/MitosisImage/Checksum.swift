import MitosisKernel

/// The one content hash of Mitosis: XXH64 (Yann Collet's xxHash, 64-bit variant), implemented
/// from its published specification. Checkpoint images use it for every integrity checksum, and
/// content-hash dirty tracking uses it to tell whether a page changed.
///
/// XXH64 is not cryptographic: it detects accidental damage (bit flips, truncation, torn
/// writes), not deliberate forgery.
public struct Checksum: Sendable {
    package static let prime1: UInt64 = 0x9E37_79B1_85EB_CA87
    package static let prime2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    package static let prime3: UInt64 = 0x1656_67B1_9E37_79F9
    package static let prime4: UInt64 = 0x85EB_CA77_C2B2_AE63
    package static let prime5: UInt64 = 0x27D4_EB2F_1656_67C5

    /// The XXH64 of `bytes` in one call.
    public static func xxh64(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
        var hasher = Checksum(seed: seed)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The XXH64 of a byte collection (an array, a `Data`, a slice).
    public static func xxh64<Bytes: Sequence>(_ bytes: Bytes, seed: UInt64 = 0) -> UInt64 where Bytes.Element == UInt8 {
        if let hash = bytes.withContiguousStorageIfAvailable({ xxh64(UnsafeRawBufferPointer($0), seed: seed) }) {
            return hash
        }
        return Array(bytes).withUnsafeBytes { xxh64($0, seed: seed) }
    }

    /// The 16 lowercase hex digits Mitosis prints a checksum as.
    public static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    // MARK: Streaming

    private let seed: UInt64
    /// The four lanes (v1 to v4 of the specification).
    private var lanes: (UInt64, UInt64, UInt64, UInt64)
    /// Bytes not yet consumed by a 32-byte stripe.
    private var tail: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var tailCount = 0
    private var total: UInt64 = 0

    /// A hasher fed piece by piece (`update`), giving the same value as hashing the concatenation.
    public init(seed: UInt64 = 0) {
        self.seed = seed
        lanes = (seed &+ Self.prime1 &+ Self.prime2, seed &+ Self.prime2, seed, seed &- Self.prime1)
    }

    @inline(__always)
    private static func round(_ acc: UInt64, _ lane: UInt64) -> UInt64 {
        rotate(acc &+ lane &* prime2, 31) &* prime1
    }

    @inline(__always)
    private static func rotate(_ value: UInt64, _ bits: UInt64) -> UInt64 {
        (value << bits) | (value >> (64 - bits))
    }

    @inline(__always)
    private static func merge(_ acc: UInt64, _ value: UInt64) -> UInt64 {
        (acc ^ round(0, value)) &* prime1 &+ prime4
    }

    /// Feeds more bytes.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var none: Checksum?
        Self.update(&self, &none, bytes)
    }

    /// Feeds the same bytes to `a` and `b` in one pass over them (a page run's checksum and the
    /// whole data file's, in `PageRunBuilder`): each stripe is loaded once, and where the CPU has
    /// AVX-512 both hashes' eight lanes take one multiply (`HashStripes`).
    package static func update(_ a: inout Checksum, _ b: inout Checksum, _ bytes: UnsafeRawBufferPointer) {
        // Both at a stripe boundary (pages, always, in the builder): one pass. Otherwise each alone.
        guard a.tailCount == 0, b.tailCount == 0 else {
            a.update(bytes)
            b.update(bytes)
            return
        }
        var second: Checksum? = b
        update(&a, &second, bytes)
        b = second!
    }

    /// `a.update(bytes)`, and `b.update(bytes)` in the same pass when `b` is given and, like `a`,
    /// at a stripe boundary (the caller checks).
    private static func update(_ a: inout Checksum, _ b: inout Checksum?, _ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        a.total &+= UInt64(bytes.count)
        b?.total &+= UInt64(bytes.count)
        var offset = 0
        if a.tailCount > 0 {
            let take = min(32 - a.tailCount, bytes.count)
            let count = a.tailCount
            withUnsafeMutableBytes(of: &a.tail) { $0.baseAddress!.advanced(by: count).copyMemory(from: bytes.baseAddress!, byteCount: take) }
            a.tailCount += take
            offset = take
            guard a.tailCount == 32 else { return }
            var full = a.tail
            var none: (UInt64, UInt64, UInt64, UInt64)?
            withUnsafeBytes(of: &full) { HashStripes.feed(&a.lanes, &none, $0) }
            a.tailCount = 0
        }
        let stripes = (bytes.count - offset) / 32 * 32
        var lanesB = b?.lanes
        HashStripes.feed(&a.lanes, &lanesB, UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + stripes)]))
        if let lanesB { b!.lanes = lanesB }
        offset += stripes
        let rest = bytes.count - offset
        if rest > 0 {
            let tailBytes = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            withUnsafeMutableBytes(of: &a.tail) { $0.baseAddress!.copyMemory(from: tailBytes.baseAddress!, byteCount: rest) }
            a.tailCount = rest
            if b != nil {
                withUnsafeMutableBytes(of: &b!.tail) { $0.baseAddress!.copyMemory(from: tailBytes.baseAddress!, byteCount: rest) }
                b!.tailCount = rest
            }
        }
    }

    /// Feeds a byte collection.
    public mutating func update<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        if bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) == nil {
            Array(bytes).withUnsafeBytes { update($0) }
        }
    }

    /// The hash of everything fed so far (the hasher may go on being fed).
    public func finalize() -> UInt64 {
        var acc: UInt64
        if total >= 32 {
            let (v1, v2, v3, v4) = lanes
            acc = Self.rotate(v1, 1) &+ Self.rotate(v2, 7) &+ Self.rotate(v3, 12) &+ Self.rotate(v4, 18)
            acc = Self.merge(acc, v1)
            acc = Self.merge(acc, v2)
            acc = Self.merge(acc, v3)
            acc = Self.merge(acc, v4)
        } else {
            acc = seed &+ Self.prime5
        }
        acc &+= total
        var rest = tail
        let count = tailCount
        withUnsafeBytes(of: &rest) { p in
            var offset = 0
            while count - offset >= 8 {
                let lane = UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                acc = Self.rotate(acc ^ Self.round(0, lane), 27) &* Self.prime1 &+ Self.prime4
                offset += 8
            }
            if count - offset >= 4 {
                let lane = UInt64(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
                acc = Self.rotate(acc ^ (lane &* Self.prime1), 23) &* Self.prime2 &+ Self.prime3
                offset += 4
            }
            while offset < count {
                acc = Self.rotate(acc ^ (UInt64(p[offset]) &* Self.prime5), 11) &* Self.prime1
                offset += 1
            }
        }
        acc ^= acc >> 33
        acc &*= Self.prime2
        acc ^= acc >> 29
        acc &*= Self.prime3
        acc ^= acc >> 32
        return acc
    }
}
