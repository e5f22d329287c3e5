import CMitosis
import SystemPackage

extension Kernel {
    /// How two processes' kernel objects of `kind` compare: `.orderedSame` when they are the same
    /// object, otherwise the kernel's (obfuscated but consistent) pointer order, so that many
    /// objects can be sorted and grouped with O(n log n) calls. The corresponding system call is `kcmp`.
    package static func kcmpOrder(_ pid1: Int32, _ pid2: Int32, _ kind: KcmpKind,
                                 _ index1: Int = 0, _ index2: Int = 0) throws(Errno) -> Comparison {
        switch try check({ mitosis_kcmp(pid1, pid2, kind.rawValue, UInt(index1), UInt(index2)) }) {
        case 0: return .orderedSame
        case 1: return .orderedAscending
        case 2: return .orderedDescending
        default: return .unordered
        }
    }

    /// The result of `kcmpOrder`.
    package enum Comparison: Sendable {
        case orderedAscending, orderedSame, orderedDescending
        /// Different objects the kernel would not order.
        case unordered
    }
}
