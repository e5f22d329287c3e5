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
    static func runsFreely(_ pid: Int32) throws -> Bool {
        for _ in 0..<100 {
            if try tracer(of: pid) == 0, try threadStates(of: pid).values.allSatisfy({ $0 != "t" && $0 != "T" }) {
                return true
            }
            usleep(10_000)
        }
        return false
    }
}
