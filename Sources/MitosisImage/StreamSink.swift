import Foundation
import SystemPackage
import MitosisKernel
import MitosisModel

/// Sends a checkpoint as one framed byte stream over any file descriptor — a socket to a peer,
/// a pipe, a file — instead of writing a directory. `CheckpointStream.receive` on the other end
/// turns the stream back into an image directory identical to the one `DirectorySink` writes.
///
/// The stream format (Docs/image-format.md, "Stream"): an 16-byte stream header, then frames
/// of `begin`, `pages`…, and `finish` (or `abort`), each with its own XXH64.
/// The sink does not close the descriptor.
public final class StreamSink: CheckpointSink, @unchecked Sendable {
    private let fd: FileDescriptor
    private let isSocket: Bool
    private let lock = NSLock()
    private var builder: PageRunBuilder?
    private var header: CheckpointHeader?
    private var closed = false

    public init(_ fd: FileDescriptor) {
        self.fd = fd
        isSocket = Kernel.isSocket(fd)
    }

    public func begin(_ header: CheckpointHeader) throws {
        try lock.withLock {
            guard builder == nil, !closed else { throw ImageError.sinkState("begin called twice") }
            try checkHeader(header)
            self.header = header
            builder = PageRunBuilder(pageSize: header.pageSize)
            try send(CheckpointStream.streamHeader())
            try send(.begin, try CheckpointStream.json(header))
        }
    }

    public func writePages(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        try lock.withLock {
            guard var builder, !closed else { throw ImageError.sinkState(closed ? "the checkpoint was already closed" : "pages or finish before begin") }
            // Validation happens before anything is sent; afterwards the runs are sent as they pass.
            try validateRun(address: address, count: bytes.count, pageSize: builder.pageSize)
            try builder.add(address: address, bytes) { _ throws(ImageError) in }
            self.builder = builder
            // At most one run's worth of pages per frame, so that receivers bound their buffers.
            let chunk = ImageFormat.maxRunPages * builder.pageSize
            for offset in stride(from: 0, to: bytes.count, by: chunk) {
                var frame: [UInt8] = []
                frame.appendLittleEndian(address + UInt64(offset))
                frame.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<min(offset + chunk, bytes.count)]))
                try send(.pages, frame)
            }
        }
    }

    @discardableResult
    public func finish(_ manifest: CheckpointManifest) throws -> CheckpointManifest {
        try lock.withLock {
            guard var builder, let header, !closed else { throw ImageError.sinkState("finish before begin or after the end") }
            guard manifest.header == header else {
                throw ImageError.sinkState("the manifest's identity (id, kind, parent, sequence, pid, created, page size) differs from the header's")
            }
            let stored: CheckpointManifest
            do {
                let (index, runs, data) = try builder.finish()
                stored = builder.complete(manifest, runs: runs, index: FileDigest(size: UInt64(index.count), xxh64: Checksum.xxh64(index)), data: data)
                try send(.finish, try CheckpointStream.json(stored))
            } catch {
                abortLocked(reason: "\(error)")
                throw error
            }
            closed = true
            return stored
        }
    }

    public func abort(reason: String) {
        lock.withLock { abortLocked(reason: reason) }
    }

    private func abortLocked(reason: String) {
        guard !closed else { return }
        closed = true
        if builder != nil { try? send(.abort, Array(reason.utf8)) }
    }

    private func send(_ kind: CheckpointStream.FrameKind, _ payload: [UInt8]) throws(ImageError) {
        var frame: [UInt8] = []
        frame.reserveCapacity(payload.count + 24)
        frame.appendLittleEndian(kind.rawValue)
        frame.appendLittleEndian(UInt32(0))
        frame.appendLittleEndian(UInt64(payload.count))
        frame += payload
        frame.appendLittleEndian(Checksum.xxh64(payload))
        try send(frame)
    }

    private func send(_ bytes: [UInt8]) throws(ImageError) {
        let result: Result<Void, Errno> = bytes.withUnsafeBytes { buffer in
            Result { () throws(Errno) in
                if isSocket { try Kernel.sendAll(fd, buffer) } else { try Kernel.writeAll(fd, buffer) }
            }
        }
        if case .failure(let errno) = result {
            closed = true
            throw .stream("sending failed: \(errno)")
        }
    }
}

/// The receiving side of `StreamSink`.
public enum CheckpointStream {
    package static let magic = Array("MITOSTRM".utf8)
    /// Largest `begin`/`finish` payload accepted (JSON), and largest `pages` payload: one run of
    /// `ImageFormat.maxRunPages` pages, for page sizes up to 256 KiB.
    package static let maxJSONBytes: UInt64 = 256 << 20
    package static let maxPagesBytes: UInt64 = 64 << 20

    package enum FrameKind: UInt32 {
        case begin = 1, pages = 2, finish = 3, abort = 4
    }

    package static func streamHeader() -> [UInt8] {
        var bytes = magic
        bytes.appendLittleEndian(UInt32(CheckpointManifest.currentFormatVersion))
        bytes.appendLittleEndian(UInt32(0))
        return bytes
    }

    package static func json<T: Encodable>(_ value: T) throws(ImageError) -> [UInt8] {
        do { return try JSONOutput.bytes(value, pretty: false) } catch { throw .stream("cannot encode: \(error)") }
    }

    /// Reads one checkpoint stream from `fd` until its `finish` frame and writes it as the image
    /// directory `directory`. Returns the stored manifest. A damaged or cut-short stream, or one
    /// the sender aborted, leaves an incomplete (never a valid-looking) checkpoint behind.
    @discardableResult
    public static func receive(from fd: FileDescriptor, into directory: String) throws(ImageError) -> CheckpointManifest {
        try receive(from: fd, into: DirectorySink(directory: directory))
    }

    /// Reads one checkpoint stream from `fd` into any sink (relaying it elsewhere, say).
    @discardableResult
    public static func receive(from fd: FileDescriptor, into sink: any CheckpointSink) throws(ImageError) -> CheckpointManifest {
        var begun = false
        do {
            let head = try readExactly(fd, 16, what: "stream header")
            guard Array(head[0..<8]) == magic else { throw ImageError.stream("not a checkpoint stream (bad magic)") }
            let version = head.littleEndianUInt32(at: 8)
            guard CheckpointManifest.readableFormatVersions.contains(Int(version)) else {
                throw ImageError.stream("unsupported stream version \(version)")
            }
            var number = 0
            while true {
                let (kind, payload) = try readFrame(fd, number: number)
                defer { number += 1 }
                switch kind {
                case .begin:
                    guard !begun else { throw ImageError.stream("frame \(number): a second begin") }
                    let header = try decode(CheckpointHeader.self, payload, frame: number)
                    try sink.begin(header)
                    begun = true
                case .pages:
                    guard begun, payload.count >= 8 else { throw ImageError.stream("frame \(number): pages before begin or without an address") }
                    try payload.withUnsafeBytes { buffer in
                        try sink.writePages(at: payload.littleEndianUInt64(at: 0), UnsafeRawBufferPointer(rebasing: buffer[8...]))
                    }
                case .finish:
                    guard begun else { throw ImageError.stream("frame \(number): finish before begin") }
                    let sent = try decode(CheckpointManifest.self, payload, frame: number)
                    let stored = try sink.finish(sent)
                    guard stored == sent else {
                        throw ImageError.stream("the received image differs from what the sender wrote")
                    }
                    return stored
                case .abort:
                    let reason = String(decoding: payload, as: UTF8.self)
                    sink.abort(reason: "the sender aborted: \(reason)")
                    throw ImageError.stream("the sender aborted the checkpoint: \(reason)")
                }
            }
        } catch {
            let failure = error as? ImageError ?? .stream("\(error)")
            if begun { sink.abort(reason: failure.description) }
            throw failure
        }
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ payload: [UInt8], frame: Int) throws(ImageError) -> T {
        do { return try JSONOutput.decoder().decode(type, from: Data(payload)) } catch {
            throw .stream("frame \(frame): undecodable \(type)")
        }
    }

    private static func readFrame(_ fd: FileDescriptor, number: Int) throws(ImageError) -> (FrameKind, [UInt8]) {
        let head = try readExactly(fd, 16, what: "frame \(number)")
        guard let kind = FrameKind(rawValue: head.littleEndianUInt32(at: 0)) else {
            throw .stream("frame \(number): unknown kind \(head.littleEndianUInt32(at: 0))")
        }
        let length = head.littleEndianUInt64(at: 8)
        let limit = kind == .pages ? maxPagesBytes + 8 : maxJSONBytes
        guard length <= limit else { throw .stream("frame \(number): length \(length) exceeds \(limit)") }
        let payload = try readExactly(fd, Int(length), what: "frame \(number)")
        let sum = try readExactly(fd, 8, what: "frame \(number) checksum")
        guard sum.littleEndianUInt64(at: 0) == Checksum.xxh64(payload) else { throw .stream("frame \(number): checksum mismatch") }
        return (kind, payload)
    }

    private static func readExactly(_ fd: FileDescriptor, _ count: Int, what: String) throws(ImageError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result: Result<Int, Errno> = bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(Errno) in try Kernel.readFully(fd, into: buffer) }
        }
        switch result {
        case .success(count): return bytes
        case .success: throw .stream("the stream ended inside \(what)")
        case .failure(let errno): throw .stream("reading \(what) failed: \(errno)")
        }
    }
}
