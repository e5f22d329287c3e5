import MitosisKernel
/// A set of pages of one address space, kept as sorted, disjoint, non-adjacent half-open address
/// ranges `[start, end)` — a 1 GiB mapping that is wholly dirty is one range, not 262 144 pages.
/// Addresses are page-aligned by the callers.
public struct PageSet: Equatable, Sendable, CustomStringConvertible {
    public struct Range: Equatable, Hashable, Sendable {
        public var start: UInt64
        public var end: UInt64
        public init(start: UInt64, end: UInt64) {
            self.start = start
            self.end = end
        }
        public var length: UInt64 { end - start }
    }

    public private(set) var ranges: [Range] = []

    public init() {}

    /// The set of the given ranges (any order, overlaps allowed).
    public init<S: Sequence>(_ ranges: S) where S.Element == Range {
        for range in ranges.sorted(by: { $0.start < $1.start }) where range.start < range.end {
            if let last = self.ranges.last, range.start <= last.end {
                self.ranges[self.ranges.count - 1].end = max(last.end, range.end)
            } else {
                self.ranges.append(range)
            }
        }
    }

    public var isEmpty: Bool { ranges.isEmpty }

    /// Bytes covered.
    public var byteCount: UInt64 { ranges.reduce(0) { $0 + $1.length } }

    /// Pages covered, for `pageSize`.
    public func pageCount(pageSize: UInt64 = PagemapFile.pageSize) -> Int { Int(byteCount / pageSize) }

    /// Whether `address` lies in the set.
    public func contains(_ address: UInt64) -> Bool {
        let index = firstIndex(endingAfter: address)
        return index < ranges.count && ranges[index].start <= address
    }

    /// Adds `[start, end)`.
    public mutating func insert(start: UInt64, end: UInt64) {
        guard start < end else { return }
        // Fast path: appending in address order, the way scans produce ranges.
        if let last = ranges.last, start >= last.end {
            if start == last.end { ranges[ranges.count - 1].end = end } else { ranges.append(Range(start: start, end: end)) }
            return
        }
        if ranges.isEmpty { ranges.append(Range(start: start, end: end)); return }
        self = union(PageSet([Range(start: start, end: end)]))
    }

    /// One merge of the two sorted lists (no sort): unions run several times per copy round
    /// over thousands of ranges (a fragmented heap's data pages).
    public func union(_ other: PageSet) -> PageSet {
        if other.ranges.isEmpty { return self }
        if ranges.isEmpty { return other }
        var result = PageSet()
        result.ranges.reserveCapacity(ranges.count + other.ranges.count)
        var i = 0, j = 0
        while i < ranges.count || j < other.ranges.count {
            let next: Range
            if j == other.ranges.count || (i < ranges.count && ranges[i].start <= other.ranges[j].start) {
                next = ranges[i]
                i += 1
            } else {
                next = other.ranges[j]
                j += 1
            }
            if let last = result.ranges.last, next.start <= last.end {
                if next.end > last.end { result.ranges[result.ranges.count - 1].end = next.end }
            } else {
                result.ranges.append(next)
            }
        }
        return result
    }

    public func intersection(_ other: PageSet) -> PageSet {
        var result = PageSet()
        var i = 0, j = 0
        while i < ranges.count && j < other.ranges.count {
            let a = ranges[i], b = other.ranges[j]
            let start = max(a.start, b.start), end = min(a.end, b.end)
            if start < end { result.ranges.append(Range(start: start, end: end)) }
            if a.end < b.end { i += 1 } else { j += 1 }
        }
        return result
    }

    public func subtracting(_ other: PageSet) -> PageSet {
        var result = PageSet()
        var j = 0
        for range in ranges {
            var start = range.start
            while j < other.ranges.count && other.ranges[j].end <= start { j += 1 }
            var k = j
            while k < other.ranges.count && other.ranges[k].start < range.end {
                let cut = other.ranges[k]
                if cut.start > start { result.ranges.append(Range(start: start, end: cut.start)) }
                start = max(start, cut.end)
                k += 1
            }
            if start < range.end { result.ranges.append(Range(start: start, end: range.end)) }
        }
        return result
    }

    /// The part of the set inside `[start, end)`.
    public func clamped(start: UInt64, end: UInt64) -> PageSet {
        intersection(PageSet([Range(start: start, end: end)]))
    }

    /// Index of the first range whose end is above `address`.
    private func firstIndex(endingAfter address: UInt64) -> Int {
        var low = 0, high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            if ranges[mid].end <= address { low = mid + 1 } else { high = mid }
        }
        return low
    }

    public var description: String {
        "[" + ranges.map { "0x\(String($0.start, radix: 16))-0x\(String($0.end, radix: 16))" }.joined(separator: ", ") + "]"
    }
}
