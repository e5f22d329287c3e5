import Testing
import MitosisKernel
@testable import MitosisImage

@Suite("Checksum")
struct ChecksumTests {
    /// Published XXH64 values (seed 0), cross-checked with `xxhsum -H64` 0.8.1.
    @Test("XXH64 matches the published test vectors", arguments: [
        ("", 0xEF46_DB37_51D8_E999 as UInt64),
        ("a", 0xD24E_C4F1_A98C_6E5B),
        ("abc", 0x44BC_2CF5_AD77_0999),
        ("The quick brown fox jumps over the lazy dog", 0x0B24_2D36_1FDA_71BC),
    ])
    func vectors(text: String, expected: UInt64) {
        #expect(Checksum.xxh64(Array(text.utf8)) == expected)
    }

    /// Byte patterns that exercise every tail length and the 32-byte stripe loop (values from `xxhsum -H64`).
    @Test("XXH64 of generated buffers around the stripe size", arguments: [
        (31, 0xC346_D2B5_9B4D_8EE1 as UInt64), (32, 0xCBF5_9C51_16FF_32B4), (100, 0x6AC1_E580_3216_6597),
    ])
    func counting(count: Int, expected: UInt64) {
        #expect(Checksum.xxh64((0..<count).map { UInt8($0) }) == expected)
    }

    @Test("streaming in any split gives the one-shot value")
    func streaming() {
        let bytes = (0..<1000).map { UInt8(($0 * 7 + 3) % 256) }
        #expect(Checksum.xxh64(bytes) == 0x5F23_5FA0_33F1_A3FB)
        for split in [0, 1, 5, 31, 32, 33, 64, 999, 1000] {
            var hasher = Checksum()
            hasher.update(bytes[..<split])
            hasher.update(bytes[split...])
            #expect(hasher.finalize() == 0x5F23_5FA0_33F1_A3FB, "split at \(split)")
        }
        var bytewise = Checksum()
        for byte in bytes { bytewise.update([byte]) }
        #expect(bytewise.finalize() == 0x5F23_5FA0_33F1_A3FB)
    }

    /// `PageRunBuilder` hashes a run's bytes and the data file's in one pass (`Checksum.update(_:_:_:)`).
    @Test("two hashes fed in one pass give each one's value, at a stripe boundary or not")
    func twoInOnePass() {
        let bytes = (0..<1000).map { UInt8(($0 * 7 + 3) % 256) }
        // Both at a boundary (the one-pass loop), then `b` mid-stripe (each alone).
        for lead in [0, 64, 5] {
            var a = Checksum(), b = Checksum()
            b.update(bytes[..<lead])
            bytes.withUnsafeBytes { Checksum.update(&a, &b, $0) }
            #expect(a.finalize() == 0x5F23_5FA0_33F1_A3FB, "lead \(lead)")
            #expect(b.finalize() == Checksum.xxh64(bytes[..<lead] + bytes), "lead \(lead)")
        }
        var seeded = Checksum(seed: 9), plain = Checksum()
        bytes.withUnsafeBytes { Checksum.update(&seeded, &plain, $0) }
        #expect(seeded.finalize() == Checksum.xxh64(bytes, seed: 9))
        #expect(plain.finalize() == 0x5F23_5FA0_33F1_A3FB)
    }

    /// The AVX-512 loop (where this CPU has it) and the portable one agree lane for lane, alone
    /// and two at once, over 64 KiB of every byte value.
    @Test("the AVX-512 and the portable stripe loops agree")
    func vectorAndPortable() {
        let bytes = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
        bytes.withUnsafeBytes { raw in
            for two in [false, true] {
                var fastA: (UInt64, UInt64, UInt64, UInt64) = (1, 2, 3, 4), slowA = fastA
                var fastB: (UInt64, UInt64, UInt64, UInt64)? = two ? (5, 6, 7, 8) : nil, slowB = fastB
                HashStripes.feed(&fastA, &fastB, raw)
                HashStripes.feed(&slowA, &slowB, raw, portable: true)
                #expect(fastA == slowA, "two: \(two), vectorized: \(HashStripes.vectorized)")
                #expect(fastB.map { [$0.0, $0.1, $0.2, $0.3] } == slowB.map { [$0.0, $0.1, $0.2, $0.3] })
            }
        }
    }

    @Test("a seed changes the value; hex is 16 digits")
    func seedAndHex() {
        #expect(Checksum.xxh64([UInt8](), seed: 1) != Checksum.xxh64([UInt8]()))
        #expect(Checksum.hex(0xAB) == "00000000000000ab")
    }
}
