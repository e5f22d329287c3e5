/// `/proc/PID/status`: `Key:\tvalue` lines. Kept as an ordered list of pairs; typed accessors
/// read the fields Mitosis uses.
public struct ProcStatus: Equatable, Sendable {
    public var fields: [(key: String, value: String)]

    public init(parsing text: String) {
        fields = text.split(separator: "\n").compactMap { line in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: " \t"))
        }
    }

    public subscript(key: String) -> String? { fields.first { $0.key == key }?.value }

    /// The thread id of the tracer, 0 when untraced.
    public var tracerPID: Int32 { self["TracerPid"].flatMap { Int32($0) } ?? 0 }

    public static func == (lhs: ProcStatus, rhs: ProcStatus) -> Bool {
        lhs.fields.elementsEqual(rhs.fields) { $0.key == $1.key && $0.value == $1.value }
    }
}
