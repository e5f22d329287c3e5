import SystemPackage
import MitosisInspect
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Copies pages out of a running or frozen target: `process_vm_readv` (one system call per run,
/// no page faults in the target), falling back to `/proc/PID/mem` for pages the target itself may
/// not read (`PROT_NONE`).
package struct MemoryReader: Sendable {
    package let pid: Int32
    private let memory: ProcessMemoryFile

    package init(pid: Int32) throws(MitosisError) {
        self.pid = pid
        do {
            memory = try ProcessMemoryFile(pid: pid)
        } catch {
            throw TargetProcess.failure(error, pid: pid, reading: "/proc/\(pid)/mem")
        }
    }

    package func close() { memory.close() }

    /// Reads many pieces, up to `Kernel.maxMemoryPieces` per system call; returns the indices of
    /// the pieces that could not be read whole, with why. Throws only when the target is gone.
    package func read(_ pieces: [(address: UInt64, buffer: UnsafeMutableRawBufferPointer)]) throws(MitosisError) -> [Int: MitosisError] {
        var failures: [Int: MitosisError] = [:]
        var start = 0
        while start < pieces.count {
            let batch = pieces[start..<min(start + Kernel.maxMemoryPieces, pieces.count)]
            var done = (try? Kernel.readMemory(pid: pid, pieces: batch)) ?? 0
            var index = start
            // Pieces wholly read; from the first short one on, piece by piece (with the fallback).
            while index < batch.endIndex, done >= pieces[index].buffer.count {
                done -= pieces[index].buffer.count
                index += 1
            }
            while index < batch.endIndex {
                do {
                    try read(at: pieces[index].address, into: pieces[index].buffer)
                } catch .targetExited(let pid) {
                    throw .targetExited(pid)
                } catch {
                    failures[index] = error
                }
                index += 1
            }
            start = batch.endIndex
        }
        return failures
    }

    /// Fills `buffer` with the target's bytes at `address`, or throws: a page that vanished
    /// (unmapped meanwhile) or a target that exited.
    package func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(MitosisError) {
        var done = (try? Kernel.readMemory(pid: pid, address: address, into: buffer)) ?? 0
        if done < buffer.count {
            do {
                done += try memory.read(at: address + UInt64(done), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch {
                throw TargetProcess.failure(error, pid: pid, reading: "/proc/\(pid)/mem")
            }
        }
        guard done == buffer.count else {
            do { try TargetCheck.validate(pid, forTracing: false) } catch { throw error }
            throw .system(operation: "reading memory of process \(pid) at 0x\(String(address + UInt64(done), radix: 16))",
                          errno: .badAddress)
        }
    }
}
