/// `/proc/PID/status`: `Key:\tvalue` lines. Kept as an ordered list of pairs; typed accessors
/// read the fields Mitosis uses.
public struct ProcStatus: Equatable, Sendable {
    public var fields: [(key: String, value: String)]

    /// `Key:<spaces or tabs>value` lines; others are skipped. Parsed on the UTF-8 bytes: the
    /// freeze of an epoch reads several threads' status files (seccomp, the injected programs'
    /// end signal), and a parse by `Character` cost more than the reads.
    public init(parsing text: String) {
        var text = text
        var fields: [(key: String, value: String)] = []
        text.withUTF8 { bytes in
            var start = 0
            while start < bytes.count {
                var end = start
                while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
                var colon = start
                while colon < end && bytes[colon] != UInt8(ascii: ":") { colon += 1 }
                if colon < end {
                    var low = colon + 1, high = end
                    while low < high && (bytes[low] == UInt8(ascii: " ") || bytes[low] == UInt8(ascii: "\t")) { low += 1 }
                    while high > low && (bytes[high - 1] == UInt8(ascii: " ") || bytes[high - 1] == UInt8(ascii: "\t")) { high -= 1 }
                    fields.append((String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<colon]), as: UTF8.self),
                                   String(decoding: UnsafeBufferPointer(rebasing: bytes[low..<high]), as: UTF8.self)))
                }
                start = end + 1
            }
        }
        self.fields = fields
    }

    public subscript(key: String) -> String? { fields.first { $0.key == key }?.value }

    /// The thread id of the tracer, 0 when untraced.
    public var tracerPID: Int32 { self["TracerPid"].flatMap { Int32($0) } ?? 0 }

    public static func == (lhs: ProcStatus, rhs: ProcStatus) -> Bool {
        lhs.fields.elementsEqual(rhs.fields) { $0.key == $1.key && $0.value == $1.value }
    }
}
