import MitosisModel
extension ProcessStacks {
    /// The eu-stack-like listing: one `TID n (name):` header per thread, then one line per frame,
    /// `#i  0xPC function+0xOFFSET (module)`.
    public func text() -> String {
        var out = "PID \(pid)\n"
        for thread in threads {
            out += "TID \(thread.tid) (\(thread.name)):\n"
            for (index, frame) in thread.frames.enumerated() {
                out += "#\(index)".padding(4) + " 0x" + hex(frame.pc, width: 16) + " " + frame.label + "\n"
            }
            if let reason = thread.truncated { out += "    (stopped: \(reason))\n" }
        }
        return out
    }
}

extension StackFrame {
    /// `function+0xOFF (module)`, or `module+0xOFF` when no symbol covers the pc.
    public var label: String {
        let module = self.module.map { String($0.split(separator: "/").last ?? Substring($0)) }
        guard let function else { return "\(module ?? "??")+0x\(hex(offset))" }
        return "\(function)+0x\(hex(offset))" + (module.map { " (\($0))" } ?? "")
    }
}

package func hex(_ value: UInt64, width: Int = 0) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

extension String {
    package func padding(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}
