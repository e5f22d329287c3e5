import CMitosisStacks
import MitosisKernel
import MitosisModel
import MitosisTrace

/// The frames of one thread as unwinding found them, before symbolization: cheap to take while
/// the process is frozen, symbolized after it runs again.
package struct RawStack: Sendable {
    package var tid: Int32
    /// The thread's name, read while it was frozen.
    package var name: String
    /// Program counters, innermost first.
    package var pcs: [UInt64]
    /// `exact[i]`: pcs[i] is the very instruction the thread will execute (the innermost frame,
    /// or one a signal interrupted), not a return address after a call.
    package var exact: [Bool]
    /// Why the walk stopped early; nil when it reached the outermost frame.
    package var truncated: String?
}

/// A libunwind-ptrace session over one frozen process: its unwind-table and register-state caches
/// and its memory page cache serve every thread. Used only on the tracer's thread.
package final class UnwindSession {
    private let unwinder: OpaquePointer
    package let pid: Int32
    package let maxFrames: Int
    private var pcs: [UInt64]
    private var signalFrames: [UInt8]

    /// - Parameter mappings: the process's memory map. Code of the vDSO and of every mapped ELF
    ///   file unwinds through the `.eh_frame_hdr` table loaded with it, read from memory: the
    ///   vDSO has no file for libunwind-ptrace to find, and reading tables from memory once per
    ///   session beats libunwind-ptrace re-mapping each file for every thread.
    package init(pid: Int32, maxFrames: Int, mappings: [MemoryMapping]) throws(MitosisError) {
        // The unwinder reads memory with process_vm_readv, which needs a thread that has not exited.
        guard let unwinder = mitosis_unwinder_create(Kernel.procEntry(pid)) else {
            throw .unsupported(feature: "libunwind-ptrace", detail: "could not create an address space for process \(pid)")
        }
        for image in Self.codeImages(mappings) {
            _ = mitosis_unwinder_add_image(unwinder, image.header, image.text.start, image.text.end)
        }
        self.unwinder = unwinder
        self.pid = pid
        self.maxFrames = min(max(1, maxFrames), Tracer.maxFramesLimit)
        pcs = Array(repeating: 0, count: self.maxFrames)
        signalFrames = Array(repeating: 0, count: self.maxFrames)
    }

    deinit { mitosis_unwinder_destroy(unwinder) }

    /// Each executable mapping of an ELF image, with the address its ELF header is mapped at
    /// (the image's mapping of file offset 0), ascending.
    package static func codeImages(_ mappings: [MemoryMapping]) -> [(header: UInt64, text: MemoryMapping)] {
        var headers: [String: UInt64] = [:]
        for mapping in mappings where (mapping.kind == .file || mapping.kind == .vdso) && mapping.offset == 0 {
            headers[mapping.moduleIdentity] = headers[mapping.moduleIdentity] ?? mapping.start
        }
        return mappings.compactMap { mapping in
            guard mapping.isExecutable, mapping.kind == .file || mapping.kind == .vdso,
                  let header = headers[mapping.moduleIdentity] else { return nil }
            return (header, mapping)
        }.sorted { $0.text.start < $1.text.start }
    }

    /// Walks one thread's stack. The thread must be in a ptrace-stop held by the calling thread.
    /// Never fails: a stack that cannot be walked (corrupt, unreadable) yields the frames found.
    package func unwind(_ tid: Int32) -> RawStack {
        var reason: Int32 = 0, error: Int32 = 0
        let count = Int(mitosis_unwind(unwinder, tid, &pcs, &signalFrames, Int32(maxFrames), &reason, &error))
        var exact = [Bool](repeating: false, count: count)
        for index in 0..<count { exact[index] = index == 0 || signalFrames[index - 1] != 0 }
        let truncated: String? = switch Int(reason) {
        case MITOSIS_UNWIND_END: nil
        case MITOSIS_UNWIND_MAX_FRAMES: "max_frames"
        case MITOSIS_UNWIND_LOOP: "loop"
        default: String(cString: mitosis_unwind_strerror(error))
        }
        let comm = (try? Kernel.readFile("/proc/\(pid)/task/\(tid)/comm")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return RawStack(tid: tid, name: comm.trimmingCharacters(in: "\n"), pcs: Array(pcs[0..<count]), exact: exact, truncated: truncated)
    }
}

extension Tracer {
    /// The largest number of frames a walk records by default.
    public static let defaultMaxFrames = 256
    /// The most frames walked per thread, whatever is asked: the buffers for them are allocated
    /// while the target is frozen, so a huge number must not become a huge allocation.
    public static let maxFramesLimit = 4096

    /// The symbolized call stack of every frozen thread of `pid` (default: the frozen process),
    /// for recording next to `threadState(_:)`. Symbolization reads ELF files while the process
    /// stays frozen; to stop the target for less time use `ProcessStacks.capture(pid:)`, which
    /// symbolizes after the thaw.
    public func stacks(of pid: Int32? = nil, maxFrames: Int = Tracer.defaultMaxFrames) throws(MitosisError) -> [ThreadStack] {
        let process = pid ?? self.pid
        let (raw, maps) = try unwindWithMaps(of: process, maxFrames: maxFrames)
        let symbolizer = Symbolizer(pid: process, maps: maps)
        return raw.map(symbolizer.symbolize)
    }
}

extension ProcessStacks {
    /// Freezes `pid`, walks every thread's stack, thaws, then symbolizes: the target is stopped
    /// only for the walk. The memory map is read while frozen, so code unmapped right after the
    /// thaw is still attributed to its module.
    public static func capture(pid: Int32, maxFrames: Int = Tracer.defaultMaxFrames) async throws -> ProcessStacks {
        let (raw, maps) = try await withFrozenProcess(pid) { tracer in
            try await tracer.unwindWithMaps(maxFrames: maxFrames)
        }
        let symbolizer = Symbolizer(pid: pid, maps: maps)
        return ProcessStacks(pid: pid, threads: raw.map(symbolizer.symbolize))
    }
}

extension Tracer {
    /// Walks the stack of every frozen thread of `pid` (default: the frozen process); returns
    /// the walks and the memory map they were made against.
    package func unwindWithMaps(of pid: Int32? = nil, maxFrames: Int) throws(MitosisError) -> ([RawStack], [UInt8]) {
        let process = pid ?? self.pid
        guard let maps = try? Kernel.readFile("/proc/\(Kernel.procEntry(process))/maps") else { throw .noSuchProcess(process) }
        let mappings = ProcMaps.parse(String(decoding: maps, as: UTF8.self))
        let session = try UnwindSession(pid: process, maxFrames: maxFrames, mappings: mappings)
        return (threads(of: process).map(session.unwind), maps)
    }
}
