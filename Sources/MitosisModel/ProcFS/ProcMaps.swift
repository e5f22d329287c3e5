/// `/proc/PID/maps` and `/proc/PID/smaps`. Both start each area with the same header line
///
///     7f2c7fd26000-7f2c7fd27000 r--p 00000000 fe:00 332717                     /usr/lib/ld.so
///
/// and smaps follows it with `Key:  N kB` lines and a `VmFlags:` line. The path is everything
/// after the padding, so it may hold spaces; the kernel escapes a newline in it as `\012` and
/// appends ` (deleted)` when the file was unlinked.
public enum ProcMaps {
    /// Parses maps or smaps text. Lines that are truncated or malformed are skipped (with the
    /// smaps lines that follow them); nothing in the input makes the parser fail.
    public static func parse(_ text: String) -> [MemoryMapping] {
        var text = text
        return text.withUTF8 { parse(bytes: $0) }
    }

    /// As `parse(_:)`, on the bytes of the file as read: no `String` of the whole text is made.
    /// Checkpoints read `maps` at every pre-copy round and in the freeze, so the parser works on
    /// bytes (a tenth of protect's CPU went to the `Character`-wise parse).
    public static func parse(_ bytes: [UInt8]) -> [MemoryMapping] {
        bytes.withUnsafeBufferPointer { parse(bytes: $0) }
    }

    private static func parse(bytes text: UnsafeBufferPointer<UInt8>) -> [MemoryMapping] {
        var mappings: [MemoryMapping] = []
        var currentIsValid = false
        var lineStart = 0
        while lineStart < text.count {
            var lineEnd = lineStart
            while lineEnd < text.count && text[lineEnd] != newline { lineEnd += 1 }
            defer { lineStart = lineEnd + 1 }
            guard lineEnd > lineStart else { continue }
            let line = UnsafeBufferPointer(rebasing: text[lineStart..<lineEnd])
            if let mapping = parseHeader(bytes: line) {
                mappings.append(mapping)
                currentIsValid = true
            } else if let colon = line.firstIndex(of: colonByte), !line[..<colon].contains(space) {
                // A `Key: value` line of smaps: it belongs to the last valid header.
                guard currentIsValid else { continue }
                addDetail(key: line[..<colon], value: UnsafeBufferPointer(rebasing: line[(colon + 1)...]), to: &mappings[mappings.count - 1])
            } else {
                currentIsValid = false
            }
        }
        return mappings
    }

    /// The column where the kernel starts the path: it pads the header to 72 characters, then
    /// writes one space (`seq_setwidth(m, 25 + sizeof(void *) * 6 - 1)` then `seq_pad(m, ' ')`).
    private static let pathColumn = 73
    private static let newline = UInt8(ascii: "\n"), space = UInt8(ascii: " "), colonByte = UInt8(ascii: ":")
    private static let deletedSuffix = Array(" (deleted)".utf8)

    /// Parses one header line; nil when it is not a well-formed header.
    public static func parseHeader(_ line: Substring) -> MemoryMapping? {
        var line = line
        return line.withUTF8 { parseHeader(bytes: $0) }
    }

    private static func parseHeader(bytes line: UnsafeBufferPointer<UInt8>) -> MemoryMapping? {
        var cursor = 0
        /// The next run of non-spaces.
        func field() -> Range<Int>? {
            while cursor < line.count && line[cursor] == space { cursor += 1 }
            guard cursor < line.count else { return nil }
            let first = cursor
            while cursor < line.count && line[cursor] != space { cursor += 1 }
            return first..<cursor
        }
        guard let range = field(), let perms = field(), let offsetText = field(),
              let deviceText = field(), let inodeText = field(),
              let dash = line[range].firstIndex(of: UInt8(ascii: "-")),
              let start = number(line[range.lowerBound..<dash], radix: 16),
              let end = number(line[(dash + 1)..<range.upperBound], radix: 16),
              perms.count == 4, line[perms].allSatisfy({ "rwxsp-".utf8.contains($0) }),
              let offset = number(line[offsetText], radix: 16),
              let device = parseDevice(line[deviceText]),
              let inode = number(line[inodeText], radix: 10)
        else { return nil }

        // The path starts after the padding; spaces beyond the padding belong to the path.
        var path: String?
        var deleted = false
        let inodeEnd = cursor
        var firstNonSpace = inodeEnd
        while firstNonSpace < line.count && line[firstNonSpace] == space { firstNonSpace += 1 }
        if firstNonSpace < line.count {
            let startColumn = min(max(pathColumn, inodeEnd + 2), firstNonSpace)
            var pathEnd = line.count
            if pathEnd - startColumn >= deletedSuffix.count && line[(pathEnd - deletedSuffix.count)..<pathEnd].elementsEqual(deletedSuffix) {
                deleted = true
                pathEnd -= deletedSuffix.count
            }
            path = unescapeNewlines(String(decoding: UnsafeBufferPointer(rebasing: line[startColumn..<pathEnd]), as: UTF8.self))
        }
        let permsText = String(decoding: UnsafeBufferPointer(rebasing: line[perms]), as: UTF8.self)
        return MemoryMapping(
            start: start, end: end, perms: permsText, offset: offset, device: device, inode: inode,
            path: path, kind: kind(path: path, deleted: deleted, shared: line[perms.upperBound - 1] == UInt8(ascii: "s")), deleted: deleted)
    }

    /// Hexadecimal or decimal digits, nothing else: nil when empty, malformed or too large.
    private static func number(_ digits: Slice<UnsafeBufferPointer<UInt8>>, radix: UInt64) -> UInt64? {
        guard !digits.isEmpty else { return nil }
        var value: UInt64 = 0
        for byte in digits {
            let digit: UInt64
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt64(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f") where radix == 16: digit = UInt64(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F") where radix == 16: digit = UInt64(byte - UInt8(ascii: "A") + 10)
            default: return nil
            }
            let (shifted, overflow) = value.multipliedReportingOverflow(by: radix)
            let (sum, carry) = shifted.addingReportingOverflow(digit)
            guard !overflow, !carry else { return nil }
            value = sum
        }
        return value
    }

    /// `fe:01` → 254:1.
    private static func parseDevice(_ text: Slice<UnsafeBufferPointer<UInt8>>) -> DeviceNumber? {
        guard let colon = text.firstIndex(of: colonByte),
              let major = number(text[..<colon], radix: 16), let majorValue = UInt32(exactly: major),
              let minor = number(text[(colon + 1)...], radix: 16), let minorValue = UInt32(exactly: minor)
        else { return nil }
        return DeviceNumber(major: majorValue, minor: minorValue)
    }

    /// The kernel prints a newline in a path as the four characters `\012` (`seq_file_path(…, "\n")`).
    /// It does not escape backslashes, so a path really holding `\012` reads back as a newline.
    package static func unescapeNewlines(_ path: String) -> String {
        path.contains("\\012") ? path.replacing("\\012", with: "\n") : path
    }

    package static func kind(path: String?, deleted: Bool, shared: Bool) -> MemoryMapping.Kind {
        guard let path else { return shared ? .sharedAnonymous : .anonymous }
        if path.hasPrefix("[") {
            switch path {
            case "[heap]": return .heap
            case "[stack]": return .stack
            case "[vdso]": return .vdso
            case "[vsyscall]": return .vsyscall
            default:
                if path.hasPrefix("[stack:") { return .stack }
                if path.hasPrefix("[vvar") { return .vvar }
                if path.hasPrefix("[anon_shmem:") { return .sharedAnonymous }
                if path.hasPrefix("[anon:") { return .anonymous }
                return .special
            }
        }
        if deleted && path == "/dev/zero" && shared { return .sharedAnonymous }
        if deleted && path.hasPrefix("/SYSV") && path.count == 13 && UInt32(path.dropFirst(5), radix: 16) != nil {
            return .sysvSharedMemory
        }
        return .file
    }

    private static func addDetail(key: Slice<UnsafeBufferPointer<UInt8>>, value: UnsafeBufferPointer<UInt8>, to mapping: inout MemoryMapping) {
        let words = value.split(separator: space)
        if key.elementsEqual("VmFlags".utf8) {
            mapping.vmFlags = words.map { String(decoding: UnsafeBufferPointer(rebasing: $0), as: UTF8.self) }
            return
        }
        guard words.count == 2, words[1].elementsEqual("kB".utf8), let kilobytes = number(words[0], radix: 10) else { return }
        let (bytes, overflow) = kilobytes.multipliedReportingOverflow(by: 1024)
        guard !overflow else { return }
        if mapping.sizes == nil { mapping.sizes = MappingSizes() }
        mapping.sizes?.set(Substring(String(decoding: UnsafeBufferPointer(rebasing: key), as: UTF8.self)), bytes: bytes)
    }
}
