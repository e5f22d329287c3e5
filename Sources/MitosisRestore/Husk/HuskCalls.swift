import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Injected calls and memory writes into the husk, each naming the restore step it serves.
extension Tracer {
    /// Runs one system call in the husk (thread `tid`, default the main thread), naming `step` if it fails.
    @discardableResult
    func huskCall(_ step: @autoclosure () -> String, _ number: Int, _ arguments: [UInt64], in tid: Int32? = nil) throws -> UInt64 {
        do {
            return try performSyscall(number, arguments, in: tid)
        } catch {
            throw StepFailure(step: step(), detail: "\(error)")
        }
    }

    /// Writes `bytes` into the husk's memory at `address`.
    func huskWrite(_ step: @autoclosure () -> String, _ address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        do {
            var done = 0
            while done < bytes.count {
                let count = try Kernel.writeMemory(pid: pid, address: address + UInt64(done), from: UnsafeRawBufferPointer(rebasing: bytes[done...]))
                guard count > 0 else { throw Errno.ioError }
                done += count
            }
        } catch {
            throw StepFailure(step: step(), detail: "process_vm_writev: \(error)")
        }
    }

    func huskWrite<T>(_ step: @autoclosure () -> String, _ address: UInt64, value: T) throws {
        var copy = value
        try withUnsafeBytes(of: &copy) { try huskWrite(step(), address, $0) }
    }

    /// Writes a NUL-terminated path into the scratch area and returns its address.
    func huskText(_ text: String, area: WorkArea) throws -> UInt64 {
        let bytes = Array(text.utf8) + [0]
        guard bytes.count <= Int(WorkArea.page) * (WorkArea.scratchPages - 1) else {
            throw StepFailure(step: "passing \(text)", detail: "path too long")
        }
        try bytes.withUnsafeBytes { try huskWrite("passing \(text)", area.scratch + WorkArea.text, $0) }
        return area.scratch + WorkArea.text
    }

    func huskMaps() throws -> [MemoryMapping] {
        do {
            return ProcMaps.parse(String(decoding: try Kernel.readFile("/proc/\(pid)/maps"), as: UTF8.self))
        } catch {
            throw StepFailure(step: "reading the husk's maps", detail: "\(error)")
        }
    }
}
