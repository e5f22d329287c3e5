/// `/proc/PID/mountinfo`: `ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER`.
/// Paths escape space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
public enum ProcMountinfo {
    /// Every well-formed line; malformed lines are skipped.
    public static func parse(_ text: String) -> [MountInfo] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 7, let separator = fields.firstIndex(of: "-"), separator >= 6,
                  separator + 2 < fields.count,
                  let id = Int(fields[0]), let parent = Int(fields[1])
            else { return nil }
            let numbers = fields[2].split(separator: ":")
            guard numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1]) else { return nil }
            return MountInfo(mountId: id, parentId: parent, device: DeviceNumber(major: major, minor: minor),
                             root: unescape(fields[3]), mountPoint: unescape(fields[4]),
                             fileSystemType: String(fields[separator + 1]), source: unescape(fields[separator + 2]))
        }
    }

    /// Decodes the kernel's three-digit octal escapes.
    package static func unescape(_ text: Substring) -> String {
        guard text.contains("\\") else { return String(text) }
        var bytes: [UInt8] = []
        let utf8 = Array(text.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "\\"), index + 3 < utf8.count,
               let value = UInt8(String(decoding: utf8[(index + 1)...(index + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
