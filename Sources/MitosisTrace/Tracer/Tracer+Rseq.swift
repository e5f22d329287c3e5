import MitosisKernel
import MitosisModel

/// Restartable sequences (rseq): a thread stopped inside a critical section resumes at the
/// section's abort handler, as the kernel resumes any thread preempted there.
extension Tracer {
    /// Moves `thread`, stopped inside its active rseq critical section, to the section's abort
    /// handler and clears the section pointer — what the kernel does at the thread's next return
    /// to user space, the stop having preempted it. Done at the freeze because an injected call
    /// returns the thread to user space outside the section first: the kernel then finds nothing
    /// to abort and clears the pointer, and the thread went back into the section unprotected
    /// (a per-CPU commit after a preemption, maybe on another CPU). A section the kernel would
    /// refuse (its version, flags or abort signature) is left alone: the kernel kills the thread
    /// for it, as it would have anyway.
    func abortRseqCriticalSection(_ thread: SeizedThread) {
        guard let configuration = try? Ptrace.rseqConfiguration(thread.tid), configuration.rseq_abi_pointer != 0,
              var registers = try? Ptrace.generalRegisters(thread.tid) else { return }
        func bytes(at address: UInt64, count: Int) -> [UInt8]? {
            var bytes = [UInt8](repeating: 0, count: count)
            let read = try? bytes.withUnsafeMutableBytes { buffer in try Kernel.readMemory(pid: thread.pid, address: address, into: buffer) }
            return read == count ? bytes : nil
        }
        func words(at address: UInt64, count: Int) -> [UInt64]? {
            bytes(at: address, count: count * 8).map { bytes in
                (0..<count).map { index in (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[index * 8 + $1]) << (8 * UInt64($1)) } }
            }
        }
        // struct rseq: cpu_id_start, cpu_id (4 bytes each), then rseq_cs, the active section.
        let sectionPointer = configuration.rseq_abi_pointer + 8
        // struct rseq_cs: version and flags (4 bytes each), start_ip, post_commit_offset, abort_ip.
        guard let pointer = words(at: sectionPointer, count: 1)?[0], pointer != 0,
              let section = words(at: pointer, count: 4), section[0] == 0 else { return }
        let (start, length, abort) = (section[1], section[2], section[3])
        guard start &+ length >= start, registers.rip >= start, registers.rip - start < length,
              abort < start || abort - start >= length, abort >= 4,
              let signature = bytes(at: abort - 4, count: 4).map({ $0.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }),
              signature == configuration.signature else { return }
        // The registers first: should Mitosis die between the two writes, the thread resumes at
        // the handler, outside the section, where the kernel clears the pointer itself.
        registers.rip = abort
        guard (try? Ptrace.setRegisters(thread.tid, registers)) != nil else { return }
        var zero = UInt64(0)
        _ = try? withUnsafeBytes(of: &zero) { buffer in try Kernel.writeMemory(pid: thread.pid, address: sectionPointer, from: buffer) }
    }
}
