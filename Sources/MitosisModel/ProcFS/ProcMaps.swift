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
        var mappings: [MemoryMapping] = []
        var currentIsValid = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if let mapping = parseHeader(line) {
                mappings.append(mapping)
                currentIsValid = true
            } else if let colon = line.firstIndex(of: ":"), !line[..<colon].contains(" ") {
                // A `Key: value` line of smaps: it belongs to the last valid header.
                guard currentIsValid else { continue }
                addDetail(key: line[..<colon], value: line[line.index(after: colon)...], to: &mappings[mappings.count - 1])
            } else {
                currentIsValid = false
            }
        }
        return mappings
    }

    /// The column where the kernel starts the path: it pads the header to 72 characters, then
    /// writes one space (`seq_setwidth(m, 25 + sizeof(void *) * 6 - 1)` then `seq_pad(m, ' ')`).
    private static let pathColumn = 73

    /// Parses one header line; nil when it is not a well-formed header.
    public static func parseHeader(_ line: Substring) -> MemoryMapping? {
        var rest = line[...]
        func field() -> Substring? {
            guard let first = rest.firstIndex(where: { $0 != " " }) else { return nil }
            let end = rest[first...].firstIndex(of: " ") ?? rest.endIndex
            defer { rest = rest[end...] }
            return rest[first..<end]
        }
        guard let range = field(), let perms = field(), let offsetText = field(),
              let deviceText = field(), let inodeText = field(),
              let dash = range.firstIndex(of: "-"),
              let start = UInt64(range[..<dash], radix: 16),
              let end = UInt64(range[range.index(after: dash)...], radix: 16),
              perms.count == 4, perms.allSatisfy({ "rwxsp-".contains($0) }),
              let offset = UInt64(offsetText, radix: 16),
              let device = parseDevice(deviceText),
              let inode = UInt64(inodeText)
        else { return nil }

        // The path starts after the padding; spaces beyond the padding belong to the path.
        var path: String?
        if let firstNonSpace = rest.firstIndex(where: { $0 != " " }) {
            let inodeEnd = line.utf8.distance(from: line.startIndex, to: rest.startIndex)
            let kernelStart = max(pathColumn, inodeEnd + 2)
            let nonSpaceColumn = line.utf8.distance(from: line.startIndex, to: firstNonSpace)
            let startColumn = min(kernelStart, nonSpaceColumn)
            // Every column between the inode and the first non-space is a space, so this is a character boundary.
            path = String(line[line.utf8.index(line.startIndex, offsetBy: startColumn)...])
        }
        var deleted = false
        if let name = path, name.hasSuffix(" (deleted)") {
            deleted = true
            path = String(name.dropLast(" (deleted)".count))
        }
        path = path.map(unescapeNewlines)
        return MemoryMapping(
            start: start, end: end, perms: String(perms), offset: offset, device: device, inode: inode,
            path: path, kind: kind(path: path, deleted: deleted, shared: perms.hasSuffix("s")), deleted: deleted)
    }

    /// `fe:01` → 254:1.
    package static func parseDevice(_ text: Substring) -> DeviceNumber? {
        guard let colon = text.firstIndex(of: ":"),
              let major = UInt32(text[..<colon], radix: 16),
              let minor = UInt32(text[text.index(after: colon)...], radix: 16)
        else { return nil }
        return DeviceNumber(major: major, minor: minor)
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

    private static func addDetail(key: Substring, value: Substring, to mapping: inout MemoryMapping) {
        if key == "VmFlags" {
            mapping.vmFlags = value.split(separator: " ").map(String.init)
            return
        }
        let words = value.split(separator: " ")
        guard words.count == 2, words[1] == "kB", let kilobytes = UInt64(words[0]) else { return }
        let (bytes, overflow) = kilobytes.multipliedReportingOverflow(by: 1024)
        guard !overflow else { return }
        if mapping.sizes == nil { mapping.sizes = MappingSizes() }
        mapping.sizes?.set(key, bytes: bytes)
    }
}
