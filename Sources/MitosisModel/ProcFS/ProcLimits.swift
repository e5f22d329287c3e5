/// `/proc/PID/limits`: a header, then one line per resource —
///
///     Max open files            1024                 524288               files
///
/// The name is every word before the first number or `unlimited`; then soft, hard, optional units.
public enum ProcLimits {
    /// Parses the file's text; malformed lines (and the header) are skipped.
    public static func parse(_ text: String) -> [ResourceLimit] {
        text.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            guard let first = words.firstIndex(where: { $0 == "unlimited" || UInt64($0) != nil }),
                  first > 0, words.count >= first + 2, words.count <= first + 3,
                  let soft = value(words[first]), let hard = value(words[first + 1])
            else { return nil }
            return ResourceLimit(name: words[..<first].joined(separator: " "), soft: soft, hard: hard,
                                 units: words.count == first + 3 ? String(words[first + 2]) : nil)
        }
    }

    /// `unlimited` → `.some(nil)`, a number → `.some(n)`, anything else → nil.
    private static func value(_ word: Substring) -> UInt64?? {
        if word == "unlimited" { return .some(nil) }
        return UInt64(word).map { .some($0) }
    }
}

/// `/proc/PID/cgroup`: `hierarchy-id:controller,list:/path` per line (`0::/path` for cgroup v2).
public enum ProcCgroup {
    /// Parses the file's text; malformed lines are skipped. The path may itself hold colons.
    public static func parse(_ text: String) -> [CgroupEntry] {
        text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3, let hierarchy = Int(parts[0]) else { return nil }
            return CgroupEntry(hierarchy: hierarchy, controllers: parts[1].split(separator: ",").map(String.init),
                               path: String(parts[2]))
        }
    }
}

/// NUL-separated lists: `/proc/PID/cmdline` and `/proc/PID/environ`.
public enum ProcNulList {
    /// Splits at NUL bytes; a trailing NUL ends the last item rather than starting an empty one.
    /// Bytes that are not UTF-8 are replaced, never fatal.
    public static func parse(_ bytes: [UInt8]) -> [String] {
        var items = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if bytes.last == 0 || bytes.isEmpty { items.removeLast() }
        return items
    }
}

/// `/proc/PID/ns/<type>` link targets: `net:[4026531833]`.
public enum ProcNamespace {
    /// The namespace of type `type` named by `link`; nil when the link is not `type:[inode]`.
    public static func parse(type: String, link: String) -> NamespaceInfo? {
        ProcFdTarget.bracketed(link, prefix: type + ":").map { NamespaceInfo(type: type, inode: $0) }
    }
}
