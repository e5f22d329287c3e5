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
    private var v1: UInt64, v2: UInt64, v3: UInt64, v4: UInt64
    /// Bytes not yet consumed by a 32-byte stripe.
    private var tail: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    private var tailCount = 0
    private var total: UInt64 = 0

    /// A hasher fed piece by piece (`update`), giving the same value as hashing the concatenation.
    public init(seed: UInt64 = 0) {
        self.seed = seed
        v1 = seed &+ Self.prime1 &+ Self.prime2
        v2 = seed &+ Self.prime2
        v3 = seed
        v4 = seed &- Self.prime1
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

    @inline(__always)
    private mutating func stripe(_ p: UnsafeRawBufferPointer, at offset: Int) {
        v1 = Self.round(v1, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
        v2 = Self.round(v2, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self)))
        v3 = Self.round(v3, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self)))
        v4 = Self.round(v4, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self)))
    }

    /// Feeds more bytes.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        total &+= UInt64(bytes.count)
        var offset = 0
        if tailCount > 0 {
            let take = min(32 - tailCount, bytes.count)
            let count = tailCount
            withUnsafeMutableBytes(of: &tail) { $0.baseAddress!.advanced(by: count).copyMemory(from: bytes.baseAddress!, byteCount: take) }
            tailCount += take
            offset = take
            guard tailCount == 32 else { return }
            var full = tail
            withUnsafeBytes(of: &full) { stripe($0, at: 0) }
            tailCount = 0
        }
        while bytes.count - offset >= 32 {
            stripe(bytes, at: offset)
            offset += 32
        }
        let rest = bytes.count - offset
        if rest > 0 {
            withUnsafeMutableBytes(of: &tail) { $0.baseAddress!.copyMemory(from: bytes.baseAddress! + offset, byteCount: rest) }
            tailCount = rest
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
