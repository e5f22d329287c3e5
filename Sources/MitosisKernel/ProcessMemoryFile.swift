import CMitosis
import Glibc
import SystemPackage

/// An open `/proc/PID/mem`. Unlike `process_vm_readv`, it reads pages the target cannot read
/// itself (a `PROT_NONE` area holding data), the way a debugger does.
package struct ProcessMemoryFile: Sendable {
    package let descriptor: FileDescriptor

    /// Opens `/proc/PID/mem` (a live thread's, when the main thread has exited: see
    /// `Kernel.procEntry`) for reading, or for reading and writing. The corresponding system
    /// call is `open`.
    package init(pid: Int32, writable: Bool = false) throws(Errno) {
        let mode = writable ? O_RDWR : O_RDONLY
        descriptor = FileDescriptor(rawValue: try Kernel.check { open("/proc/\(Kernel.procEntry(pid))/mem", mode | O_CLOEXEC) })
    }

    /// Reads `buffer.count` bytes at `address`; returns how many were read before an unmapped
    /// page. The corresponding system call is `pread`.
    package func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try Kernel.check {
                pread(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done,
                      Int(bitPattern: UInt(address) + UInt(done)))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes `bytes` at `address`, even into memory the target cannot write (its code), the way
    /// a debugger sets a breakpoint: the page becomes the target's private copy.
    /// The corresponding system call is `pwrite`.
    package func write(at address: UInt64, _ bytes: [UInt8]) throws(Errno) {
        let written = bytes.withUnsafeBytes { buffer in
            pwrite(descriptor.rawValue, buffer.baseAddress!, buffer.count, Int(bitPattern: UInt(address)))
        }
        if written < 0 { throw Errno(rawValue: errno) }
        guard written == bytes.count else { throw .ioError }
    }

    package func close() { try? descriptor.close() }
}

extension Kernel {
    /// The most ranges one `readMemory(pid:pieces:)` call takes (`IOV_MAX`).
    package static let maxMemoryPieces = 1024

    /// Reads many ranges of `pid`'s memory in one call: `pieces[i].buffer.count` bytes at
    /// `pieces[i].address` into each buffer, in order, at most `maxMemoryPieces` of them. Returns
    /// the bytes read, which stop short at the first range that cannot be read.
    /// The corresponding system call is `process_vm_readv`.
    package static func readMemory(pid: Int32, pieces: ArraySlice<(address: UInt64, buffer: UnsafeMutableRawBufferPointer)>) throws(Errno) -> Int {
        precondition(pieces.count <= maxMemoryPieces)
        var local = pieces.map { iovec(iov_base: $0.buffer.baseAddress, iov_len: $0.buffer.count) }
        var remote = pieces.map { iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt($0.address)), iov_len: $0.buffer.count) }
        return try check { mitosis_process_vm_readv(pid, &local, UInt(local.count), &remote, UInt(remote.count)) }
    }
}
