import MitosisImage
import MitosisModel
import NIOCore

/// A term: who may act as primary. The failover layer hands out increasing terms (the leader
/// key's revision); a standby refuses every frame of a term older than the newest it has seen,
/// so a deposed primary can no longer change it.
public struct Term: RawRepresentable, Comparable, Hashable, Codable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { rawValue = value }
    public static func < (a: Term, b: Term) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "\(rawValue)" }
}

/// An epoch: one consistent cut of the protected process, numbered 1, 2, … across the whole
/// history of a standby directory (a resynchronisation continues the numbering). 0 means none.
public struct Epoch: RawRepresentable, Comparable, Hashable, Codable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { rawValue = value }
    public static let none = Epoch(0)
    public static func < (a: Epoch, b: Epoch) -> Bool { a.rawValue < b.rawValue }
    public var next: Epoch { Epoch(rawValue &+ 1) }
    public var description: String { "\(rawValue)" }
    /// The name of the epoch's image directory on the standby: 12 digits, so that names sort.
    public var directoryName: String {
        let digits = String(rawValue)
        return String(repeating: "0", count: max(0, 12 - digits.count)) + digits
    }
}

/// What a frame carries (Docs/replication.md, "Frames").
public enum FrameType: UInt16, Sendable, CaseIterable {
    /// Primary → standby, first frame of a connection: `Hello` (JSON).
    case hello = 1
    /// Standby → primary, the answer to `hello`: `StandbyState` (JSON).
    case state = 2
    /// Primary → standby: the checkpoint header of epoch `epoch` over `parent` (JSON).
    case imageBegin = 3
    /// Primary → standby: pages of the epoch: address (u64 LE) then whole pages.
    case imagePages = 4
    /// Primary → standby: a data-file change of the epoch: `FileDelta` header (JSON), NUL, bytes.
    case fileDelta = 5
    /// Primary → standby: the epoch's manifest (JSON); the standby commits and acknowledges.
    case imageFinish = 6
    /// Primary → standby: the epoch is abandoned (reason, UTF-8).
    case imageAbort = 7
    /// Standby → primary: epoch `epoch` is durable (payload: its image id).
    case ack = 8
    /// Standby → primary: `Refusal` (JSON); the standby then closes the connection.
    case refuse = 9
    /// Primary → standby (protocol version 2): a tree epoch begins: `TreeEpochMembers` (JSON).
    /// Each member's image follows (`imageBegin` … `imageFinish`, not acknowledged on their own).
    case treeBegin = 10
    /// Primary → standby (protocol version 2): the tree epoch's `TreeManifest` (JSON); the standby
    /// commits the whole tree epoch and acknowledges it (payload of the `ack`: the manifest's id).
    case treeFinish = 11

    /// The protocol version that introduced the type.
    var since: UInt16 { self == .treeBegin || self == .treeFinish ? 2 : 1 }
}

/// One frame of the replication protocol. Every field is checked before it is used: see
/// `ReplicationFrameDecoder`.
public struct ReplicationFrame: Sendable, Equatable {
    public var type: FrameType
    public var term: Term
    public var epoch: Epoch
    public var parent: Epoch
    public var payload: [UInt8]

    public init(_ type: FrameType, term: Term, epoch: Epoch = .none, parent: Epoch = .none, payload: [UInt8] = []) {
        self.type = type
        self.term = term
        self.epoch = epoch
        self.parent = parent
        self.payload = payload
    }

    /// `MTRP`.
    public static let magic: UInt32 = 0x5052_544D
    /// 2 added the tree frames; a version 1 peer's frames are read as they were.
    public static let version: UInt16 = 2
    public static let readableVersions: ClosedRange<UInt16> = 1...2
    /// magic 4, version 2, type 2, term 8, epoch 8, parent 8, payload length 4, reserved 4, checksum 8.
    public static let headerSize = 48

    /// The largest payload accepted for `type`: pages come in runs of at most
    /// `ImageFormat.maxRunPages` pages (1 MiB of 4 KiB pages; 64 MiB allows 256 KiB pages);
    /// manifests and file deltas are bounded as images bound them; control frames are small.
    public static func maxPayload(_ type: FrameType) -> Int {
        switch type {
        case .imagePages, .fileDelta: 64 << 20 + 8 + 4096
        case .imageBegin, .imageFinish, .treeFinish: 64 << 20
        case .hello, .state, .ack, .refuse, .imageAbort, .treeBegin: 64 << 10
        }
    }

    /// The frame as bytes: header, payload. The checksum (XXH64) covers the first 40 header
    /// bytes and the payload.
    public func encode(into buffer: inout ByteBuffer) {
        payload.withUnsafeBytes { payload in
            Self.encode(type, term: term, epoch: epoch, parent: parent, payload: [payload], into: &buffer)
        }
    }

    /// A frame whose payload is `payload`'s pieces one after the other, encoded straight from
    /// them: the primary's pages go from its staging memory into the send buffer with one copy.
    static func encode(_ type: FrameType, term: Term, epoch: Epoch, parent: Epoch, payload: [UnsafeRawBufferPointer],
                       into buffer: inout ByteBuffer) {
        let length = payload.reduce(0) { $0 + $1.count }
        buffer.reserveCapacity(minimumWritableBytes: Self.headerSize + length)
        var head: [UInt8] = []
        head.reserveCapacity(40)
        head.appendLittleEndian(Self.magic)
        head.appendLittleEndian(Self.version)
        head.appendLittleEndian(type.rawValue)
        head.appendLittleEndian(term.rawValue)
        head.appendLittleEndian(epoch.rawValue)
        head.appendLittleEndian(parent.rawValue)
        head.appendLittleEndian(UInt32(length))
        head.appendLittleEndian(UInt32(0))
        var hasher = Checksum()
        hasher.update(head)
        for piece in payload { hasher.update(piece) }
        buffer.writeBytes(head)
        buffer.writeInteger(hasher.finalize(), endianness: .little)
        for piece in payload { buffer.writeBytes(piece) }
    }

    public var bytes: [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: Self.headerSize + payload.count)
        encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }
}

/// Why a peer's bytes were refused. One line each; the connection is dropped, nothing committed.
public struct ProtocolViolation: MitosisFailure, Equatable {
    public static let domain = "replication"
    public var code: String { "replication.protocolViolation" }
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// Cuts the byte stream into frames, trusting nothing: magic, version, type, reserved field and
/// payload length are checked from the header alone, before any payload is buffered; the
/// checksum once the payload is in. Any failure throws `ProtocolViolation`.
public struct ReplicationFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ReplicationFrame

    /// Types this end accepts (a standby takes primary frames only, and the reverse).
    private let accepted: Set<FrameType>

    public init(accepting accepted: Set<FrameType>) { self.accepted = accepted }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.decode(&buffer, accepting: accepted) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 { throw ProtocolViolation("the connection ended inside a frame (\(buffer.readableBytes) bytes left)") }
        return .needMoreData
    }

    /// One frame from the front of `buffer`, or nil when more bytes are needed.
    public static func decode(_ buffer: inout ByteBuffer, accepting accepted: Set<FrameType>) throws(ProtocolViolation) -> ReplicationFrame? {
        guard buffer.readableBytes >= ReplicationFrame.headerSize else {
            // Refuse garbage as soon as its first bytes show it, not only once 48 bytes are in.
            if buffer.readableBytes >= 4, buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: UInt32.self) != ReplicationFrame.magic {
                throw ProtocolViolation("not a replication frame (bad magic)")
            }
            return nil
        }
        let at = buffer.readerIndex
        guard buffer.getInteger(at: at, endianness: .little, as: UInt32.self) == ReplicationFrame.magic else {
            throw ProtocolViolation("not a replication frame (bad magic)")
        }
        let version = buffer.getInteger(at: at + 4, endianness: .little, as: UInt16.self)!
        guard ReplicationFrame.readableVersions.contains(version) else { throw ProtocolViolation("unsupported protocol version \(version)") }
        let rawType = buffer.getInteger(at: at + 6, endianness: .little, as: UInt16.self)!
        guard let type = FrameType(rawValue: rawType) else { throw ProtocolViolation("unknown frame type \(rawType)") }
        guard version >= type.since else { throw ProtocolViolation("a \(type) frame in protocol version \(version)") }
        guard accepted.contains(type) else { throw ProtocolViolation("a \(type) frame is not expected from this peer") }
        let length = Int(buffer.getInteger(at: at + 32, endianness: .little, as: UInt32.self)!)
        guard buffer.getInteger(at: at + 36, endianness: .little, as: UInt32.self) == 0 else {
            throw ProtocolViolation("reserved header field is not 0")
        }
        guard length <= ReplicationFrame.maxPayload(type) else {
            throw ProtocolViolation("\(type) frame of \(length) bytes exceeds \(ReplicationFrame.maxPayload(type))")
        }
        guard buffer.readableBytes >= ReplicationFrame.headerSize + length else { return nil }
        let head = buffer.getBytes(at: at, length: 40)!
        let sum = buffer.getInteger(at: at + 40, endianness: .little, as: UInt64.self)!
        let payload = buffer.getBytes(at: at + ReplicationFrame.headerSize, length: length)!
        var hasher = Checksum()
        hasher.update(head)
        hasher.update(payload)
        guard hasher.finalize() == sum else { throw ProtocolViolation("\(type) frame: checksum mismatch") }
        buffer.moveReaderIndex(forwardBy: ReplicationFrame.headerSize + length)
        return ReplicationFrame(type, term: Term(head.littleEndianUInt64(at: 8)), epoch: Epoch(head.littleEndianUInt64(at: 16)),
                                parent: Epoch(head.littleEndianUInt64(at: 24)), payload: payload)
    }
}

extension ReplicationFrameDecoder {
    /// The frame at the start of `bytes`, or nil when they are only part of one.
    public static func decode(_ bytes: [UInt8], accepting accepted: Set<FrameType>) throws(ProtocolViolation) -> ReplicationFrame? {
        var buffer = ByteBufferAllocator().buffer(bytes: bytes)
        return try decode(&buffer, accepting: accepted)
    }
}
