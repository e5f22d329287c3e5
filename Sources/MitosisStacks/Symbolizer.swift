import CMitosisStacks
import Foundation
import MitosisKernel
import MitosisModel

/// Turns program counters of one process into function, offset, module and build-id, from the
/// ELF files (and the vDSO) it has mapped. Each module's symbol table is read once — `.symtab`,
/// else that of a debug file found by build-id, else `.dynsym` — and kept sorted for binary search. Addresses are
/// translated through the module's PT_LOAD segments, so PIE and non-PIE code resolve alike.
public final class Symbolizer: @unchecked Sendable {
    public let pid: Int32
    private let lock = NSLock()
    /// File-backed and vDSO mappings, ascending.
    private var regions: [MemoryMapping] = []
    /// By file identity (device:inode, or the pseudo name): nil when the file could not be read.
    private var modules: [String: ELFModule?] = [:]
    private var demangled: [String: String] = [:]

    /// Reads the memory map of `pid` now; frames are resolved against it until `refresh()`.
    public init(pid: Int32) throws(MitosisError) {
        self.pid = pid
        try refresh()
    }

    /// A symbolizer for `pid` resolving against `maps`, text read from `/proc/PID/maps` earlier.
    package init(pid: Int32, maps: [UInt8]) {
        self.pid = pid
        update(maps: maps)
    }

    /// Re-reads the memory map (after the process mapped or unmapped code). Modules already
    /// read stay cached.
    public func refresh() throws(MitosisError) {
        let text: [UInt8]
        do {
            text = try Kernel.readFile("/proc/\(Kernel.procEntry(pid))/maps")
        } catch {
            throw .noSuchProcess(pid)
        }
        update(maps: text)
    }

    /// Resolves frames against this `/proc/PID/maps` text from now on.
    package func update(maps text: [UInt8]) {
        let parsed = ProcMaps.parse(String(decoding: text, as: UTF8.self)).filter {
            ($0.kind == .file && $0.path != nil) || $0.kind == .vdso
        }
        lock.withLock { regions = parsed }
    }

    /// Describes the code at `pc`. `exact` is false for a return address, which is looked up one
    /// byte earlier so that a call at the very end of a function is attributed to that function.
    public func frame(pc: UInt64, exact: Bool) -> StackFrame {
        lock.withLock {
            let lookup = exact ? pc : pc &- 1
            guard let region = region(containing: lookup) else {
                return StackFrame(pc: pc, function: nil, offset: pc, module: nil, buildId: nil)
            }
            guard let module = module(for: region) else {
                return StackFrame(pc: pc, function: nil, offset: pc - region.start + region.offset, module: region.moduleName, buildId: nil)
            }
            let fileOffset = lookup - region.start + region.offset
            let vaddr = module.virtualAddress(ofFileOffset: fileOffset) ?? fileOffset
            let delta = pc &- lookup
            guard let symbol = module.symbol(at: vaddr) else {
                return StackFrame(pc: pc, function: nil, offset: vaddr + delta, module: region.moduleName, buildId: module.buildID)
            }
            let name = demangle(String(cString: symbol.name))
            return StackFrame(pc: pc, function: name, offset: vaddr - symbol.address + delta,
                              module: region.moduleName, buildId: module.buildID)
        }
    }

    package func symbolize(_ raw: RawStack) -> ThreadStack {
        ThreadStack(tid: raw.tid, name: raw.name,
                    frames: zip(raw.pcs, raw.exact).map { frame(pc: $0, exact: $1) },
                    truncated: raw.truncated)
    }

    private func region(containing address: UInt64) -> MemoryMapping? {
        var low = 0, high = regions.count
        while low < high {
            let middle = (low + high) / 2
            if regions[middle].start <= address { low = middle + 1 } else { high = middle }
        }
        guard low > 0, address < regions[low - 1].end else { return nil }
        return regions[low - 1]
    }

    private func module(for region: MemoryMapping) -> ELFModule? {
        if let cached = modules[region.moduleIdentity] { return cached }
        let module = region.kind == .vdso ? ELFModule(memoryOf: pid, region: region) : ELFModule(fileOf: pid, region: region)
        modules[region.moduleIdentity] = module
        return module
    }

    /// C++ (`_Z…`) and Swift (`$s…`, `_$s…`, `_T0…`) names demangled, others as they are.
    private func demangle(_ name: String) -> String {
        if let known = demangled[name] { return known }
        let swiftPrefixes = ["$s", "_$s", "$S", "_$S", "$e", "_$e", "_T0"]
        var result: UnsafeMutablePointer<CChar>?
        if name.hasPrefix("_Z") {
            result = mitosis_demangle_cxx(name)
        } else if swiftPrefixes.contains(where: name.hasPrefix) {
            result = mitosis_demangle_swift(name)
        }
        let text = result.map { String(cString: $0) } ?? name
        free(result)
        demangled[name] = text
        return text
    }
}

/// One ELF module: its segments and build-id from the mapped file, its symbols from the
/// file's `.symtab`, else from a separate debug file found by build-id
/// (`/usr/lib/debug/.build-id/xx/yyyy.debug`, as Debian's `-dbg` packages install them), else
/// from the file's `.dynsym`. Owned in C memory.
package final class ELFModule {
    private let image: UnsafeMutablePointer<mitosis_elf_module>
    private let debug: UnsafeMutablePointer<mitosis_elf_module>?
    package let buildID: String?

    private init?(_ image: UnsafeMutablePointer<mitosis_elf_module>?, debugRoot: String? = nil) {
        guard let image else { return nil }
        self.image = image
        let size = Int(image.pointee.build_id_size)
        let buildID = size == 0 ? nil : withUnsafeBytes(of: image.pointee.build_id) { bytes in
            bytes.prefix(size).map { String(format: "%02x", $0) }.joined()
        }
        self.buildID = buildID
        if image.pointee.from_dynsym != 0, let buildID, let debugRoot, buildID.count > 2 {
            let debugFile = Self.load(path: "\(debugRoot)/.build-id/\(buildID.prefix(2))/\(buildID.dropFirst(2)).debug")
            // Only a full symbol table for this very build is worth taking.
            if let debugFile, debugFile.pointee.from_dynsym == 0,
               debugFile.pointee.build_id_size == image.pointee.build_id_size,
               withUnsafeBytes(of: debugFile.pointee.build_id, { Array($0.prefix(size)) })
                == withUnsafeBytes(of: image.pointee.build_id, { Array($0.prefix(size)) }) {
                debug = debugFile
                return
            }
            mitosis_elf_free(debugFile)
        }
        debug = nil
    }

    /// Opens the mapped file through `/proc/PID/map_files` (which works for deleted files and
    /// across mount namespaces), else by its path as the process sees it.
    package convenience init?(fileOf pid: Int32, region: MemoryMapping) {
        let entry = Kernel.procEntry(pid)
        let candidates = [
            "/proc/\(entry)/map_files/\(String(region.start, radix: 16))-\(String(region.end, radix: 16))",
            "/proc/\(entry)/root\(region.moduleName)",
        ]
        guard let image = candidates.lazy.compactMap(Self.load).first else { return nil }
        self.init(image, debugRoot: "/usr/lib/debug")
    }

    /// Copies the vDSO out of the process: the kernel's image has no file.
    package convenience init?(memoryOf pid: Int32, region: MemoryMapping) {
        var image = [UInt8](repeating: 0, count: Int(region.end - region.start))
        let count = (try? image.withUnsafeMutableBytes { try Kernel.readMemory(pid: pid, address: region.start, into: $0) }) ?? 0
        guard count == image.count else { return nil }
        var error: UnsafePointer<CChar>?
        // libelf reads the image in place: it must outlive the parse, which copies what it keeps.
        self.init(image.withUnsafeBytes { mitosis_elf_load_memory($0.baseAddress, $0.count, &error) })
    }

    deinit {
        mitosis_elf_free(image)
        mitosis_elf_free(debug)
    }

    private static func load(path: String) -> UnsafeMutablePointer<mitosis_elf_module>? {
        guard let fd = try? Kernel.openReadOnly(path) else { return nil }
        defer { Kernel.closeDescriptor(fd) }
        var error: UnsafePointer<CChar>?
        return mitosis_elf_load(fd.rawValue, &error)
    }

    /// The ELF virtual address that file offset `offset` is loaded as, through the PT_LOAD
    /// segment holding it.
    package func virtualAddress(ofFileOffset offset: UInt64) -> UInt64? {
        let segments = UnsafeBufferPointer(start: image.pointee.segments, count: Int(image.pointee.segment_count))
        guard let segment = segments.first(where: { offset >= $0.offset && offset < $0.offset + $0.file_size }) else { return nil }
        return offset - segment.offset + segment.vaddr
    }

    /// The function symbol covering ELF virtual address `vaddr`: its name and start.
    package func symbol(at vaddr: UInt64) -> (name: UnsafePointer<CChar>, address: UInt64)? {
        guard let symbol = mitosis_elf_lookup(debug ?? image, vaddr) else { return nil }
        return (symbol.pointee.name, symbol.pointee.address)
    }
}

extension MemoryMapping {
    /// What identifies the mapped file across its mappings: `device:inode`, or `[vdso]`.
    package var moduleIdentity: String { kind == .vdso ? "[vdso]" : "\(device):\(inode)" }
    /// The module name frames show: the file's path, or `[vdso]`.
    package var moduleName: String { path ?? "[vdso]" }
}
