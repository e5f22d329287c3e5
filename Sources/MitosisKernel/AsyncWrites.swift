import CMitosis
import Foundation
import Glibc
import SystemPackage

/// Writes that return before the device is done with them: Linux native AIO (`io_setup`,
/// `io_submit`, `io_getevents`). With direct I/O to a range inside the file's size (an extending
/// write waits in `io_submit` on ext4), the caller copies and hashes the next bytes while the
/// device takes these, on one thread: no hand-over to another thread, whose wake-ups cost more
/// than they save on a busy machine. The bytes of a write are read until it is reaped.
package final class AsyncWrites {
    /// A finished write: the tag it was submitted with, and the bytes written or the failure.
    package struct Completion {
        package var tag: UInt64
        package var result: Result<Int, Errno>
    }

    package let depth: Int
    private var context: UInt = 0
    /// Writes submitted and not yet reaped.
    package private(set) var pending = 0

    /// A context for up to `depth` writes in flight; throws when the kernel has no AIO (ENOSYS) or
    /// its limit (`fs.aio-max-nr`) is reached (EAGAIN).
    package init(depth: Int) throws(Errno) {
        self.depth = depth
        var context: UInt = 0
        _ = try Kernel.check { withUnsafeMutablePointer(to: &context) { mitosis_syscall6(206 /* io_setup */, depth, Int(bitPattern: $0), 0, 0, 0, 0) } }
        self.context = context
    }

    /// Waits for every write still in flight (their buffers may be freed after), then frees the
    /// context on a thread of its own: `io_destroy` waits for an RCU grace period (44-51 ms at the
    /// end of a 1 GiB dump, measured with `strace -T`), and nothing needs to wait for it.
    deinit {
        while pending > 0, (try? reap(minimum: pending)) != nil {}
        let context = Int(bitPattern: context)
        let thread = Thread { _ = mitosis_syscall6(207 /* io_destroy */, context, 0, 0, 0, 0, 0) }
        thread.name = "mitosis-io-destroy"
        thread.start()
    }

    /// Starts writing `buffer` at `offset` of `fd`; `tag` comes back with its completion. At most
    /// `depth` writes may be pending.
    package func submit(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, at offset: UInt64, tag: UInt64) throws(Errno) {
        precondition(pending < depth, "more AIO writes than the context holds")
        // struct iocb (linux/aio_abi.h), 64 bytes, little-endian x86-64.
        var control = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        control.0 = tag                                                   // aio_data
        control.2 = 1 /* IOCB_CMD_PWRITE */ | UInt64(UInt32(fd.rawValue)) << 32  // aio_lio_opcode, aio_reqprio, aio_fildes
        control.3 = UInt64(UInt(bitPattern: buffer.baseAddress))           // aio_buf
        control.4 = UInt64(buffer.count)                                   // aio_nbytes
        control.5 = offset                                                 // aio_offset
        let submitted = try Kernel.check {
            withUnsafeMutablePointer(to: &control) { control in
                var list: UnsafeMutableRawPointer? = UnsafeMutableRawPointer(control)
                return withUnsafeMutablePointer(to: &list) {
                    mitosis_syscall6(209 /* io_submit */, Int(bitPattern: context), 1, Int(bitPattern: $0), 0, 0, 0)
                }
            }
        }
        guard submitted == 1 else { throw .resourceTemporarilyUnavailable }
        pending += 1
    }

    /// Waits until at least `minimum` pending writes are done and returns every finished one.
    package func reap(minimum: Int) throws(Errno) -> [Completion] {
        guard pending > 0 else { return [] }
        // struct io_event: data, obj, res, res2 (32 bytes each).
        var events = [Int64](repeating: 0, count: 4 * pending)
        let count = try Kernel.check {
            events.withUnsafeMutableBytes {
                mitosis_syscall6(208 /* io_getevents */, Int(bitPattern: context), min(minimum, pending), pending, Int(bitPattern: $0.baseAddress), 0, 0)
            }
        }
        pending -= count
        return (0..<count).map { index in
            let result = events[4 * index + 2]
            return Completion(tag: UInt64(bitPattern: events[4 * index]),
                              result: result < 0 ? .failure(Errno(rawValue: Int32(-result))) : .success(Int(result)))
        }
    }
}
