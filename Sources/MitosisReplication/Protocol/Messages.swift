import Foundation
import MitosisModel

/// The first frame of a connection, primary → standby.
public struct Hello: Codable, Sendable, Equatable {
    /// The protected process on the primary.
    public var pid: Int32
    /// The primary's host name, for the standby's log.
    public var node: String
    public var pageSize: Int
    /// The image format the primary writes (`CheckpointManifest.currentFormatVersion`).
    public var formatVersion: Int
    /// The newest epoch this primary's tracking can send a delta from (its last acknowledged
    /// epoch and image id), or nil: then only a full base can follow.
    public var deltaBase: CommittedEpoch?
    /// Whether the epochs are tree epochs of the process tree under `pid` (`protect --tree`).
    public var tree: Bool?

    public init(pid: Int32, node: String, pageSize: Int, formatVersion: Int, deltaBase: CommittedEpoch?, tree: Bool = false) {
        self.tree = tree ? true : nil
        self.pid = pid
        self.node = node
        self.pageSize = pageSize
        self.formatVersion = formatVersion
        self.deltaBase = deltaBase
    }
}

/// The members of a tree epoch (payload of `treeBegin`), top-down, the root first: what the
/// standby checks an incremental tree epoch against (the same members, the same parents, as the
/// tree epoch it builds on), and the images it expects before `treeFinish`.
public struct TreeEpochMembers: Codable, Sendable, Equatable {
    public struct Member: Codable, Sendable, Equatable {
        public var pid: Int32
        public var parent: Int32
        public init(pid: Int32, parent: Int32) {
            self.pid = pid
            self.parent = parent
        }
    }

    public var root: Int32
    public var members: [Member]

    public init(root: Int32, members: [Member]) {
        self.root = root
        self.members = members
    }
}

/// An epoch a standby holds durably: its number and the id of its checkpoint image.
public struct CommittedEpoch: Codable, Sendable, Equatable {
    public var epoch: Epoch
    public var imageID: String
    public init(epoch: Epoch, imageID: String) {
        self.epoch = epoch
        self.imageID = imageID
    }

    // Spelled so that the snake-case coders of `JSONOutput` turn `image_id` back into it.
    private enum CodingKeys: String, CodingKey {
        case epoch
        case imageID = "imageId"
    }
}

/// The standby's answer to `Hello`: what it holds, and whether it could be promoted.
public struct StandbyState: Codable, Sendable, Equatable {
    /// The newest committed epoch, nil when the standby holds none.
    public var committed: CommittedEpoch?
    /// The newest term the standby has seen (persisted).
    public var term: Term
    /// Whether the newest committed epoch could be restored on the standby now.
    public var ready: Bool
    /// Why not, when not ready.
    public var reasons: [String]

    public init(committed: CommittedEpoch?, term: Term, ready: Bool, reasons: [String]) {
        self.committed = committed
        self.term = term
        self.ready = ready
        self.reasons = reasons
    }
}

/// Why a standby refused a connection or an epoch.
public struct Refusal: Codable, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Codable, Sendable {
        /// The frame's term is older than the newest the standby has seen: a newer primary exists.
        case olderTerm = "older-term"
        /// The epoch does not build on the standby's newest committed epoch: send a full base.
        case parentMismatch = "parent-mismatch"
        /// The bytes broke the protocol.
        case malformed
        /// The standby's directory was promoted: it accepts no epoch any more.
        case promoted
        /// Writing the epoch failed on the standby (a full disk, say).
        case storage
    }

    public var code: Code
    public var reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "\(code.rawValue): \(reason)" }
}

/// A change to one data file in an epoch (payload of a `fileDelta` frame, before its bytes).
public struct FileDelta: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// The whole file: `bytes` is its content (a new file, or one that changed too much).
        case whole
        /// Bytes appended: `bytes` go at `offset` (the size the previous epoch shipped).
        case append
        /// Changed blocks: `bytes` go at `offset` (one block; several frames for several blocks).
        case block
        /// The file no longer exists.
        case removed
    }

    /// The file's absolute path on the primary.
    public var path: String
    public var kind: Kind
    public var offset: UInt64
    /// The file's size at the epoch: the standby truncates or extends to it.
    public var size: UInt64
    /// The file's mode bits.
    public var mode: UInt32

    public init(path: String, kind: Kind, offset: UInt64, size: UInt64, mode: UInt32) {
        self.path = path
        self.kind = kind
        self.offset = offset
        self.size = size
        self.mode = mode
    }
}

enum MessageCoding {
    /// Compact JSON, the bytes Foundation's `JSONEncoder` writes (`JSONWriter`), reusing a
    /// memo's parts when given one.
    static func encode<T: Encodable>(_ value: T, memo: JSONMemo? = nil) -> [UInt8] {
        // These types always encode.
        (try? JSONWriter(pretty: false, memo: memo).encode(value)) ?? []
    }

    static func decode<T: Decodable>(_ type: T.Type, _ payload: [UInt8]) throws(ProtocolViolation) -> T {
        do { return try JSONOutput.decoder().decode(type, from: Data(payload)) } catch {
            throw ProtocolViolation("undecodable \(type) payload")
        }
    }
}
