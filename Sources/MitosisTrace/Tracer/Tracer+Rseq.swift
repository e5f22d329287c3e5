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
        guard let configuration = try? Ptrace.rseqConfiguration(thread.tid), configuration.rseq_abi_pointer != 0 else { return }
        func read<Value: FixedWidthInteger>(_ count: Int, _: Value.Type, at address: UInt64) -> [Value]? {
            var values = [Value](repeating: 0, count: count)
            let read = try? values.withUnsafeMutableBytes { buffer in try Kernel.readMemory(pid: thread.pid, address: address, into: buffer) }
            return read == count * MemoryLayout<Value>.size ? values.map(Value.init(littleEndian:)) : nil
        }
        // struct rseq: cpu_id_start, cpu_id (4 bytes each), then rseq_cs, the active section
        // (most threads have none: their registers are not read).
        let sectionPointer = configuration.rseq_abi_pointer + 8
        // struct rseq_cs: version and flags (4 bytes each), start_ip, post_commit_offset, abort_ip.
        guard let pointer = read(1, UInt64.self, at: sectionPointer)?[0], pointer != 0,
              let section = read(4, UInt64.self, at: pointer), section[0] == 0,
              var registers = try? Ptrace.generalRegisters(thread.tid) else { return }
        let (start, length, abort) = (section[1], section[2], section[3])
        guard start &+ length >= start, registers.rip >= start, registers.rip - start < length,
              abort < start || abort - start >= length, abort >= 4,
              read(1, UInt32.self, at: abort - 4)?[0] == configuration.signature else { return }
        // The registers first: should Mitosis die between the two writes, the thread resumes at
        // the handler, outside the section, where the kernel clears the pointer itself.
        registers.rip = abort
        guard (try? Ptrace.setRegisters(thread.tid, registers)) != nil else { return }
        var zero = UInt64(0)
        _ = try? withUnsafeBytes(of: &zero) { buffer in try Kernel.writeMemory(pid: thread.pid, address: sectionPointer, from: buffer) }
    }
}
