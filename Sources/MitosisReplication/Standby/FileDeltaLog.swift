import Foundation
import MitosisImage
import MitosisKernel
import SystemPackage

/// The data-file changes of one epoch, kept inside that epoch's image directory (`files.log`),
/// so that they are committed by the same rename as the epoch's memory.
///
/// `files.log`: records of `[u32 header length][FileDelta JSON][u64 byte count][bytes][u64 XXH64
/// of all before it in the record]`, in the order the primary sent them.
struct FileDeltaWriter {
    static let name = "files.log"
    private let path: String
    private var fd: FileDescriptor?

    init(imageDirectory: String) { path = imageDirectory + "/" + Self.name }

    /// Appends one `fileDelta` payload (`FileDelta` JSON, NUL, bytes) after checking it.
    mutating func add(_ payload: [UInt8]) throws {
        guard let nul = payload.firstIndex(of: 0) else { throw ProtocolViolation("file delta without its header") }
        let delta = try MessageCoding.decode(FileDelta.self, Array(payload[..<nul]))
        let bytes = payload[(nul + 1)...]
        try FileDeltaLog.check(delta, byteCount: bytes.count)
        if fd == nil {
            do {
                fd = try Kernel.openAt(nil, path, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
            } catch {
                throw Refused(.storage, "cannot create \(path): \(error)")
            }
        }
        let record = FileDeltaLog.record(delta, bytes)
        do { try Kernel.writeAll(fd!, record) } catch { throw Refused(.storage, "writing \(path): \(error)") }
    }

    /// The log's descriptor, for the image's commit to sync with its own files
    /// (`DirectorySink.finish(_:encoded:syncing:)`); the caller closes it. Nil when empty.
    mutating func release() -> FileDescriptor? {
        defer { fd = nil }
        return fd
    }

    /// Syncs and closes the log, before the image commits.
    mutating func seal() throws {
        guard let fd else { return }
        self.fd = nil
        defer { try? fd.close() }
        do { try Kernel.sync(fd) } catch { throw Refused(.storage, "syncing \(path): \(error)") }
    }
}

enum FileDeltaLog {
    /// Largest file a delta may describe, and largest data-file change per record.
    static let maxFileSize: UInt64 = 1 << 40
    static let maxHeader = 64 << 10

    static func check(_ delta: FileDelta, byteCount: Int) throws {
        guard delta.path.hasPrefix("/"), !delta.path.split(separator: "/").contains(".."), !delta.path.contains("\0"), delta.path.utf8.count < 4096 else {
            throw ProtocolViolation("file delta for '\(delta.path.prefix(100))', not an absolute path without '..'")
        }
        let count = UInt64(byteCount)
        guard delta.size <= maxFileSize, delta.offset <= delta.size, count <= delta.size - delta.offset else {
            throw ProtocolViolation("file delta for \(delta.path): \(byteCount) bytes at \(delta.offset) do not fit a file of \(delta.size)")
        }
        if delta.kind == .whole && delta.offset != 0 {
            throw ProtocolViolation("file delta for \(delta.path): whole content at offset \(delta.offset)")
        }
        if delta.kind == .removed && byteCount != 0 {
            throw ProtocolViolation("file delta for \(delta.path): bytes for a removed file")
        }
    }

    static func record(_ delta: FileDelta, _ bytes: ArraySlice<UInt8>) -> [UInt8] {
        let header = MessageCoding.encode(delta)
        var record: [UInt8] = []
        record.reserveCapacity(header.count + bytes.count + 20)
        record.appendLittleEndian(UInt32(header.count))
        record += header
        record.appendLittleEndian(UInt64(bytes.count))
        record += bytes
        record.appendLittleEndian(Checksum.xxh64(record))
        return record
    }

    /// The records of one image's `files.log` (none when it has no log), every one checked.
    static func read(imageDirectory: String) throws -> [(FileDelta, [UInt8])] {
        let path = imageDirectory + "/" + FileDeltaWriter.name
        let bytes: [UInt8]
        switch Result(catching: { () throws(Errno) in try Kernel.readFile(path, limit: 1 << 30) }) {
        case .success(let content): bytes = content
        case .failure(.noSuchFileOrDirectory): return []
        case .failure(let error): throw ReplicationError.damagedFileLog(path, "cannot read: \(error)")
        }
        var records: [(FileDelta, [UInt8])] = []
        var at = 0
        while at < bytes.count {
            let (delta, content, end) = try record(in: bytes, at: at, path: path)
            records.append((delta, content))
            at = end
        }
        return records
    }

    /// The record at `start` of `bytes` and where the next one starts, every length bounded.
    private static func record(in bytes: [UInt8], at start: Int, path: String) throws -> (FileDelta, [UInt8], Int) {
        let truncated = ReplicationError.damagedFileLog(path, "truncated record at \(start)")
        guard bytes.count - start >= 4 else { throw truncated }
        let headerLength = Int(bytes.littleEndianUInt32(at: start))
        guard headerLength <= maxHeader else { throw ReplicationError.damagedFileLog(path, "header of \(headerLength) bytes at \(start)") }
        let headerStart = start + 4
        guard bytes.count - headerStart >= headerLength + 8 else { throw truncated }
        let delta: FileDelta
        do { delta = try MessageCoding.decode(FileDelta.self, Array(bytes[headerStart..<(headerStart + headerLength)])) } catch {
            throw ReplicationError.damagedFileLog(path, "record at \(start): \(error)")
        }
        let countAt = headerStart + headerLength
        let count = bytes.littleEndianUInt64(at: countAt)
        let contentStart = countAt + 8
        guard count <= UInt64(bytes.count - contentStart), bytes.count - contentStart - Int(count) >= 8 else { throw truncated }
        let contentEnd = contentStart + Int(count)
        guard Checksum.xxh64(bytes[start..<contentEnd]) == bytes.littleEndianUInt64(at: contentEnd) else {
            throw ReplicationError.damagedFileLog(path, "checksum mismatch in record at \(start)")
        }
        do { try check(delta, byteCount: Int(count)) } catch { throw ReplicationError.damagedFileLog(path, "\(error)") }
        return (delta, Array(bytes[contentStart..<contentEnd]), contentEnd + 8)
    }

    /// The data files as of the newest image of `chain`: every record from the base up, applied
    /// in order to an in-memory picture of each file (path → content, nil when removed).
    static func materialize(_ chain: CheckpointChain) throws -> [String: MaterializedFile] {
        var files: [String: MaterializedFile] = [:]
        for image in chain.images.reversed() { try apply(imageDirectory: image.path, to: &files) }
        return files
    }

    /// The data files as of a tree epoch: the records of each tree epoch its chain goes through
    /// (`files.log` beside the members' images), from its full tree epoch up. The root's chain
    /// names those epochs: every member's image builds on the same member's in the epoch before.
    static func materialize(_ tree: TreeImage) throws -> [String: MaterializedFile] {
        var files: [String: MaterializedFile] = [:]
        for image in try tree.members[0].chain().images.reversed() {
            try apply(imageDirectory: (image.path as NSString).deletingLastPathComponent, to: &files)
        }
        return files
    }

    /// Applies the records of one image's `files.log` to `files` (a picture as of its parent).
    static func apply(imageDirectory: String, to files: inout [String: MaterializedFile]) throws {
        for (delta, bytes) in try read(imageDirectory: imageDirectory) { apply(delta, bytes, to: &files[delta.path]) }
    }

    /// `file` after `delta`: removed, replaced, or changed at an offset and cut to its size. In
    /// place: an append to a large file costs the bytes appended.
    static func apply(_ delta: FileDelta, _ bytes: [UInt8], to file: inout MaterializedFile?) {
        if delta.kind == .removed {
            file = MaterializedFile(content: [], mode: 0, removed: true)
            return
        }
        if delta.kind == .whole || file == nil || file!.removed { file = MaterializedFile(content: [], mode: delta.mode, removed: false) }
        file!.mode = delta.mode
        let offset = Int(delta.offset)
        let end = offset + bytes.count
        if file!.content.count < end { file!.content.append(contentsOf: repeatElement(UInt8(0), count: end - file!.content.count)) }
        file!.content.replaceSubrange(offset..<end, with: bytes)
        let size = Int(delta.size)
        if file!.content.count > size { file!.content.removeLast(file!.content.count - size) }
        if file!.content.count < size { file!.content.append(contentsOf: repeatElement(UInt8(0), count: size - file!.content.count)) }
    }
}

/// A data file as of an epoch (or its removal).
struct MaterializedFile: Sendable {
    var content: [UInt8]
    var mode: UInt32
    var removed: Bool
}
