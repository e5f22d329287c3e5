/// Where a checkpoint goes. The checkpoint engine calls `begin` once, `writePages` for every run
/// of pages it stores, then `finish` to commit — or `abort` to give up, which leaves a clearly
/// incomplete checkpoint that no reader mistakes for a good one.
///
/// `DirectorySink` writes an image directory; `StreamSink` sends the same image as one framed
/// byte stream over any file descriptor (a socket to a peer, a pipe), which
/// `CheckpointStream.receive` turns back into a directory. Errors thrown are `ImageError`s;
/// after one, the sink has aborted itself and refuses further calls.
public protocol CheckpointSink: AnyObject, Sendable {
    /// Starts the checkpoint.
    func begin(_ header: CheckpointHeader) throws
    /// Stores the pages at `address` (page-aligned) whose contents are `bytes` (whole pages).
    /// Runs may come in any order but must not overlap.
    func writePages(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws
    /// Commits the checkpoint described by `manifest` (whose identity must match the header).
    /// Returns the manifest as stored, with `pageIndex` and `files` filled in.
    @discardableResult
    func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest
    /// Abandons the checkpoint, recording `reason`. Never throws; calling it again, or after
    /// `finish`, does nothing.
    func abort(reason: String)
}

/// A sink that takes the pages of a checkpoint's first copy round before the checkpoint knows
/// which of them are final, so that they are written while the next ones are copied, from a few
/// reused buffers — instead of being held until the freeze in memory the kernel must first zero
/// (over half of a 1 GiB dump's CPU time). Once the target is thawed the checkpoint hands over its
/// final pages in order: `keepEarly` for the early pages still current, `writePages` for the rest.
/// The image is byte for byte the one `writePages` alone would give for that same sequence:
/// pages still in place are neither written nor hashed again, and from the first page that
/// differs on, the early bytes are read back from the sink and rehashed (moved where needed).
package protocol EarlyPageSink: CheckpointSink {
    /// Whether this sink takes early pages at all (a compressed image does not: its runs are
    /// frames whose bytes cannot be kept in place or read back as pages).
    var takesEarlyPages: Bool { get }
    /// Stores `bytes` (whole pages at `address`, above every earlier early page) ahead of time.
    /// The bytes are read until `waitEarly` of the returned mark returns. Only before the first
    /// `keepEarly` or `writePages`.
    func writeEarly(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws -> UInt64
    /// Waits until the early bytes handed over up to `mark` are no longer read.
    func waitEarly(_ mark: UInt64) throws
    /// No more early pages: waits until their bytes are no longer read, and releases what
    /// writing them needed while the checkpoint goes on.
    func endEarly() throws
    /// Stores, as `writePages` would, the `length` bytes at `address` with the bytes handed to
    /// `writeEarly` for them. The final pages must come in the early pages' order, early pages
    /// left out or replaced, new pages after them (early bytes are never read from a place
    /// already rewritten; a sequence that would need it is refused).
    func keepEarly(at address: UInt64, length: Int) throws
}

extension CheckpointSink {
    /// Stores the pages at `address` whose contents are `bytes` (whole pages).
    public func writePages(at address: UInt64, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try writePages(at: address, $0) }
    }
}

/// Checks a run handed to a sink (see `PageRunBuilder`): page-aligned, whole pages, no address overflow.
package func validateRun(address: UInt64, count: Int, pageSize: Int) throws(ImageError) {
    let size = UInt64(pageSize)
    guard count > 0, count % pageSize == 0 else {
        throw .invalidPages("\(count) bytes at 0x\(String(address, radix: 16)) is not a whole number of \(pageSize)-byte pages")
    }
    guard address % size == 0 else { throw .invalidPages("address 0x\(String(address, radix: 16)) is not page-aligned") }
    guard address <= UInt64.max - UInt64(count) else { throw .invalidPages("run at 0x\(String(address, radix: 16)) overflows the address space") }
}
