import Testing
@testable import MitosisCheckpoint
import MitosisModel

/// `PageSet.union` merges two sorted sets in one pass: it must give the set the sorting
/// initializer builds from both sets' ranges, for overlapping, adjacent, nested and disjoint ranges.
@Suite struct PageSetUnionTests {
    /// A random set of up to `count` ranges of pages 0..<512 (page size 4096), seeded.
    static func randomSet(_ generator: inout SplitMix64, count: Int) -> PageSet {
        PageSet((0..<Int(generator.next() % UInt64(count + 1))).map { _ in
            let start = generator.next() % 512, length = generator.next() % 16 + 1
            return PageSet.Range(start: start * 4096, end: (start + length) * 4096)
        })
    }

    @Test func unionEqualsTheSortedConstruction() {
        var generator = SplitMix64(seed: 42)
        for _ in 0..<2000 {
            let a = Self.randomSet(&generator, count: 40), b = Self.randomSet(&generator, count: 40)
            let expected = PageSet(a.ranges + b.ranges)
            #expect(a.union(b) == expected)
            #expect(b.union(a) == expected)
            // Sorted, disjoint, not adjacent.
            for (x, y) in zip(expected.ranges, expected.ranges.dropFirst()) { #expect(x.end < y.start) }
        }
        let a = PageSet([.init(start: 0, end: 4096)])
        #expect(a.union(PageSet()) == a)
        #expect(PageSet().union(a) == a)
        #expect(a.union(PageSet([.init(start: 4096, end: 8192)])) == PageSet([.init(start: 0, end: 8192)]))
    }
}
