import Foundation

/// The bytes of a file that cannot be opened again by path — a memfd, a regular file deleted
/// while open — kept in the image so that restore can create it anew (CRIU's "ghost files").
/// Kept up to `limit` bytes; a larger file is recorded without its bytes and refused by name.
public struct FileContents: Codable, Sendable, Equatable {
    /// Bytes kept per file at most (as CRIU's default ghost limit, 1 MiB, times four).
    public static let limit = 4 << 20

    public var fd: Int32
    public var size: UInt64
    /// `st_mode` permission bits, for a deleted file recreated.
    public var mode: UInt32
    /// Memfd seals (`F_GET_SEALS`); nil for a regular file.
    public var seals: Int32?
    /// The content; nil when the file held more than `limit` bytes.
    public var bytes: Data?

    public init(fd: Int32, size: UInt64, mode: UInt32, seals: Int32?, bytes: Data?) {
        self.fd = fd
        self.size = size
        self.mode = mode
        self.seals = seals
        self.bytes = bytes
    }
}
