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
