import Foundation
import SystemPackage
import MitosisKernel

/// Writes `pages.data` in large sequential writes straight from the caller's memory, on a thread
/// of its own, so that the caller hashes a piece while the device takes it.
///
/// Where the file system allows it the file is written with direct I/O: page-aligned pieces of
/// 256 KiB or more (a checkpoint's staged pages) go from the caller's memory to the device with
/// no copy into the page cache, and the `fsync` at commit has little left to flush. Smaller or
/// unaligned pieces are gathered in one page-aligned buffer and written 4 MiB at a time. A file
/// system that refuses direct I/O, when the file is set up or at a write, gets buffered writes.
///
/// A piece handed to `write` is read until `drain` returns: the sink drains before its
/// `writePages` returns, so a caller's bytes are never used after its call. A full checkpoint's
/// first round goes through `writeEarly` instead: asynchronous direct I/O from the caller's own
/// thread, the device writing one buffer while the caller fills and hashes the next.
final class DataFileWriter: @unchecked Sendable {
    static let alignment = 4096
    /// Pieces this large are written from the caller's memory; smaller ones are gathered.
    static let straightMinimum = 256 << 10
    static let gatherSize = 4 << 20
    private let fd: FileDescriptor
    /// The file offset of the next piece handed over.
    private var size: UInt64 = 0
    private let gather: UnsafeMutableRawPointer
    private var gathered = 0
    // Shared with the writing thread, under `condition`.
    private let condition = NSCondition()
    private var queue: [(buffer: UnsafeRawBufferPointer, offset: UInt64)] = []
    private var busy = false
    private var failure: Errno?
    private var stopping = false
    private var directIO: Bool

    init(_ fd: FileDescriptor) throws(Errno) {
        self.fd = fd
        directIO = (try? Kernel.setDirectIO(fd, true)) != nil
        gather = try Self.takeGatherBuffer()
        // The thread holds the writer until `close` lets it end.
        let thread = Thread { self.run() }
        thread.name = "mitosis-image-writer"
        thread.start()
    }

    deinit { Self.giveBack(gather) }

    /// Gather buffers of writers gone, kept for the next ones (at most `spareLimit`): a standby
    /// writes an image per epoch, and a fresh buffer costs a page fault per page it gathers into.
    /// A writer is released only once its thread has written everything (`run` holds it).
    private static let spareLock = NSLock()
    nonisolated(unsafe) private static var spare: [UInt] = []
    private static let spareLimit = 2

    private static func takeGatherBuffer() throws(Errno) -> UnsafeMutableRawPointer {
        if let address = spareLock.withLock({ spare.popLast() }), let buffer = UnsafeMutableRawPointer(bitPattern: address) { return buffer }
        return try Kernel.mapAnonymous(length: gatherSize)
    }

    private static func giveBack(_ buffer: UnsafeMutableRawPointer) {
        let kept = spareLock.withLock {
            guard spare.count < spareLimit else { return false }
            spare.append(UInt(bitPattern: buffer))
            return true
        }
        if !kept { Kernel.unmap(buffer, length: gatherSize) }
    }

    /// Whether writes currently bypass the page cache.
    var isDirect: Bool { condition.withLock { directIO } }

    /// Hands over `piece` (whole pages) to be written after the pieces before it. `copying`:
    /// gathered whatever its size, so that the caller may reuse its memory at once (a compressed
    /// image's frames, of any length, are written from one reused buffer).
    func write(_ piece: UnsafeRawBufferPointer, copying: Bool = false) throws(Errno) {
        guard let base = piece.baseAddress, piece.count > 0 else { return }
        if !copying, piece.count >= Self.straightMinimum, Int(bitPattern: base) % Self.alignment == 0, piece.count % Self.alignment == 0 {
            try flushGathered()
            submit(piece)
            return
        }
        var offset = 0
        while offset < piece.count {
            if gathered == Self.gatherSize { try flushGathered() }
            let count = min(piece.count - offset, Self.gatherSize - gathered)
            (gather + gathered).copyMemory(from: base + offset, byteCount: count)
            gathered += count
            offset += count
        }
    }

    /// Starts writing `piece` (whole pages, page-aligned) after the pieces before it and returns
    /// at once where the kernel offers asynchronous direct I/O (`AsyncWrites`), so that the caller
    /// copies and hashes the next piece while the device takes this one, on the caller's own
    /// thread: a hand-over to the writing thread and back cost more than the write itself on a
    /// busy machine. The piece is read until `waitEarly` of the returned mark returns. Elsewhere
    /// the piece is written before this returns.
    func writeEarly(_ piece: UnsafeRawBufferPointer) throws(Errno) -> UInt64 {
        guard piece.count > 0 else { return earlySubmitted }
        if gathered > 0 { try flushGathered() }
        let offset = size
        size += UInt64(piece.count)
        earlySubmitted += 1
        if let early = try earlyWrites(covering: size) {
            if early.pending == early.depth { try reapEarly(minimum: 1) }
            try early.submit(fd, piece, at: offset, tag: earlySubmitted)
            earlyPieces[earlySubmitted] = (piece, offset)
        } else {
            try writeOut(piece, at: offset)
        }
        return earlySubmitted
    }

    /// Waits until the early pieces handed over up to `mark` are written; throws the first failure.
    func waitEarly(_ mark: UInt64) throws(Errno) {
        while let lowest = earlyPieces.keys.min(), lowest <= mark { try reapEarly(minimum: 1) }
        if let earlyFailure { throw earlyFailure }
    }

    /// No more early pieces: waits for their writes and lets the AIO context go (freed while the
    /// checkpoint goes on, see `AsyncWrites`). Later pieces are written as `write`'s are.
    func endEarly() throws(Errno) {
        try waitEarly(.max)
        earlyAIO = nil
        earlyAIOFailed = true
    }

    /// The AIO context for early pieces, with the file's size at least `end` (a write inside the
    /// file's size does not wait in `io_submit`); nil where writes are buffered or AIO is missing.
    private func earlyWrites(covering end: UInt64) throws(Errno) -> AsyncWrites? {
        guard condition.withLock({ directIO }) else { return nil }
        if earlyAIO == nil, !earlyAIOFailed {
            earlyAIO = try? AsyncWrites(depth: Self.earlyDepth)
            earlyAIOFailed = earlyAIO == nil
        }
        guard let early = earlyAIO else { return nil }
        if end > extended {
            // In large steps; the sink cuts the file to its final length at commit.
            extended = max(end, extended + Self.extendStep)
            try Kernel.truncate(fd, to: Int(extended))
        }
        return early
    }

    /// Reaps finished early writes; a piece refused (direct I/O refused, or written short) is
    /// written again here, synchronously. A failure is kept for `waitEarly` to throw once every
    /// write in flight is reaped.
    private func reapEarly(minimum: Int) throws(Errno) {
        guard let early = earlyAIO else { return }
        for done in try early.reap(minimum: minimum) {
            guard let (piece, offset) = earlyPieces.removeValue(forKey: done.tag) else { continue }
            do throws(Errno) {
                switch done.result {
                case .success(let count) where count == piece.count: break
                case .success(let count): try writeOut(UnsafeRawBufferPointer(rebasing: piece[count...]), at: offset + UInt64(count))
                case .failure(.invalidArgument): try writeOut(piece, at: offset)
                case .failure(let error): throw error
                }
            } catch {
                earlyFailure = earlyFailure ?? error
            }
        }
    }

    /// Early writes in flight at most (four stream buffers of a few pieces each, usually).
    private static let earlyDepth = 64
    private static let extendStep: UInt64 = 256 << 20
    private var earlyAIO: AsyncWrites?
    private var earlyAIOFailed = false
    private var earlySubmitted: UInt64 = 0
    private var earlyPieces: [UInt64: (UnsafeRawBufferPointer, UInt64)] = [:]
    private var earlyFailure: Errno?
    /// The size the file was extended to ahead of early writes (0: never).
    private(set) var extended: UInt64 = 0

    /// Waits until every piece handed over is written; throws the first failure.
    func drain() throws(Errno) {
        try waitEarly(.max)
        condition.lock()
        defer { condition.unlock() }
        while !queue.isEmpty || busy { condition.wait() }
        if let failure { throw failure }
    }

    /// Writes what is gathered and waits for every write.
    func finish() throws(Errno) {
        try flushGathered()
    }

    /// Writes what is gathered, waits for every write, and makes `offset` the place of the next
    /// piece: pieces already in the file are kept (or overwritten) rather than written again.
    func seek(to offset: UInt64) throws(Errno) {
        try flushGathered()
        size = offset
    }

    /// The file offset of the next piece handed over.
    var offset: UInt64 { size + UInt64(gathered) }

    /// Lets the writing thread end once its queue is empty.
    func close() {
        condition.withLock {
            stopping = true
            condition.broadcast()
        }
    }

    /// Writes the gathered bytes and waits (the buffer is then free again).
    private func flushGathered() throws(Errno) {
        if gathered > 0 {
            submit(UnsafeRawBufferPointer(start: gather, count: gathered))
            gathered = 0
        }
        try drain()
    }

    private func submit(_ buffer: UnsafeRawBufferPointer) {
        condition.withLock {
            queue.append((buffer, size))
            condition.broadcast()
        }
        size += UInt64(buffer.count)
    }

    private func run() {
        condition.lock()
        while true {
            while queue.isEmpty && !stopping { condition.wait() }
            if queue.isEmpty { break }
            let job = queue.removeFirst()
            busy = true
            let skip = failure != nil
            condition.unlock()
            var error: Errno?
            if !skip {
                do { try writeOut(job.buffer, at: job.offset) } catch let failed { error = failed }
            }
            condition.lock()
            busy = false
            if failure == nil { failure = error }
            condition.broadcast()
        }
        condition.unlock()
    }

    /// One piece at its offset; direct I/O refused (EINVAL: not on this file system, or not
    /// with this alignment) turns it off and writes the piece again, buffered.
    private func writeOut(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(Errno) {
        do {
            try Kernel.writeAll(fd, buffer, at: offset)
        } catch {
            guard error == .invalidArgument, condition.withLock({ directIO }) else { throw error }
            try Kernel.setDirectIO(fd, false)
            condition.withLock { directIO = false }
            try Kernel.writeAll(fd, buffer, at: offset)
        }
    }
}
