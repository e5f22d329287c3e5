import Foundation
import Glibc
@testable import MitosisKernel
@testable import MitosisModel

/// What a test compares before and after Mitosis touches a target: it must end untraced,
/// not left stopped, holding exactly the descriptors and mappings it had.
struct TargetHealth: Equatable {
    /// fd number → link target, from /proc/PID/fd.
    let descriptors: [Int32: String]
    /// /proc/PID/maps verbatim.
    let maps: String

    init(pid: Int32) throws {
        var descriptors: [Int32: String] = [:]
        for name in try Kernel.listDirectory("/proc/\(pid)/fd") {
            if let fd = Int32(name) { descriptors[fd] = try Kernel.readLink("/proc/\(pid)/fd/\(name)") }
        }
        self.descriptors = descriptors
        maps = String(decoding: try Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self)
    }

    /// The address space as the kernel describes it, with VMA boundaries left out: each line of
    /// `maps`, joined to the line before when the two touch and have the same permissions, device,
    /// inode and name, and (backed by a file) continue its offset. Everything /proc/PID/maps tells
    /// about an address is kept; only where one VMA ends and an identical one begins is not.
    ///
    /// Why: userfaultfd registration keeps a mapping created during tracking apart from a
    /// registered neighbour (their userfaultfd contexts differ), and whether the two end up as one
    /// VMA or two after `UFFDIO_UNREGISTER` is the kernel's merging decision. Linux 6.12 decides it
    /// by checking the wrong VMA's anon_vma chain (fixed in 6.16, "mm/vma: fix incorrectly
    /// disallowed anonymous VMA merges"): a written mapping just below an untouched registered one
    /// is kept apart at registration but merged at unregistration, so /proc/PID/maps loses a line
    /// when tracking stops (and 6.12 never merges the same pair the other way round). Newer
    /// kernels merge them at registration already.
    var joinedMappings: [String] {
        var joined: [(start: UInt64, end: UInt64, perms: Substring, offset: UInt64, device: Substring, inode: Substring, name: String)] = []
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            let range = fields[0].split(separator: "-")
            guard fields.count >= 5, range.count == 2, let start = UInt64(range[0], radix: 16),
                  let end = UInt64(range[1], radix: 16), let offset = UInt64(fields[2], radix: 16) else {
                joined.append((0, 0, "", 0, "", "", String(line)))  // not a mapping line: kept as it is
                continue
            }
            let name = fields.count > 5 ? fields[5].trimmingCharacters(in: .whitespaces) : ""
            if let last = joined.last, last.end == start, last.perms == fields[1], last.device == fields[3],
               last.inode == fields[4], last.name == name,
               last.offset + (fields[4] == "0" ? 0 : last.end - last.start) == offset {
                joined[joined.count - 1].end = end
            } else {
                joined.append((start, end, fields[1], offset, fields[3], fields[4], name))
            }
        }
        return joined.map { m in
            m.perms.isEmpty ? m.name : "\(String(m.start, radix: 16))-\(String(m.end, radix: 16)) \(m.perms) \(String(m.offset, radix: 16)) \(m.device) \(m.inode) \(m.name)"
        }
    }

    /// The lines of `maps` that are not in `other.maps`, and those of `other` not in this, for a
    /// failure message that says what changed.
    func mapsDifference(from other: TargetHealth) -> String {
        let mine = Set(maps.split(separator: "\n")), theirs = Set(other.maps.split(separator: "\n"))
        return "gone: \(theirs.subtracting(mine).sorted()) new: \(mine.subtracting(theirs).sorted())"
    }

    /// The mappings of `pid` still registered with a userfaultfd (VmFlags `um`, `uw` or `ui` in
    /// /proc/PID/smaps), as their smaps header lines.
    static func userfaultfdRegistered(_ pid: Int32) throws -> [String] {
        var registered: [String] = [], header = ""
        for line in String(decoding: try Kernel.readFile("/proc/\(pid)/smaps"), as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("VmFlags:") {
                if !Set(line.split(separator: " ").dropFirst()).isDisjoint(with: ["um", "uw", "ui"]) { registered.append(header) }
            } else if line.prefix(while: { $0 != " " }).split(separator: "-").allSatisfy({ UInt64($0, radix: 16) != nil }) {
                header = String(line)
            }
        }
        return registered
    }

    /// The TracerPid of `pid` (0 when untraced).
    static func tracer(of pid: Int32) throws -> Int32 {
        ProcStatus(parsing: String(decoding: try Kernel.readFile("/proc/\(pid)/status"), as: UTF8.self)).tracerPID
    }

    /// The scheduler state letter of every thread of `pid` (a thread that exits while this reads
    /// is left out).
    static func threadStates(of pid: Int32) throws -> [Int32: Character] {
        var states: [Int32: Character] = [:]
        for name in try Kernel.listDirectory("/proc/\(pid)/task") {
            guard let bytes = try? Kernel.readFile("/proc/\(pid)/task/\(name)/stat") else { continue }
            let text = String(decoding: bytes, as: UTF8.self)
            if let tid = Int32(name), let stat = ProcStat(parsing: text) { states[tid] = stat.state }
        }
        return states
    }

    /// True once no thread of `pid` is traced or in a tracing stop ('t'), waiting briefly for the
    /// kernel to settle after a detach.
    static func runsFreely(_ pid: Int32) async throws -> Bool {
        for _ in 0..<100 {
            if try tracer(of: pid) == 0, try threadStates(of: pid).values.allSatisfy({ $0 != "t" && $0 != "T" }) {
                return true
            }
            try await Task.sleep(for: .microseconds(10_000))
        }
        return false
    }
}
