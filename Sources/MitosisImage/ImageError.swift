import MitosisModel
import SystemPackage

/// Why a checkpoint image could not be written, read or trusted (the `image` domain of the
/// `MitosisFailure` family). Each case reads as one line naming the image, and for damage the
/// file (and index entry) where it was found.
public enum ImageError: MitosisFailure, Equatable {
    /// The directory holds no checkpoint (no commit record, no manifest).
    case notAnImage(String)
    /// The image was written in a format version this Mitosis does not read.
    case unsupportedVersion(String, file: String, version: Int)
    /// A file is shorter (or longer) than its own structure or the commit record says.
    case truncated(String, file: String, detail: String)
    /// A checksum does not match the bytes it covers; `entry` is the page index entry, if any.
    case checksumMismatch(String, file: String, entry: Int?)
    /// A file is structurally invalid (bad magic, out-of-range offset, unparsable JSON…).
    case malformed(String, file: String, detail: String)
    /// An incremental image's parent directory does not exist or cannot be opened.
    case parentMissing(String, parent: String)
    /// The parent directory holds a different checkpoint than the one recorded.
    case parentMismatch(String, expected: String, found: String)
    /// Following parent links comes back to an image already seen (or goes absurdly deep).
    case chainCycle(String)
    /// The checkpoint was never committed: its writer aborted (`reason`) or was interrupted.
    case incomplete(String, reason: String)
    /// Mitosis refuses to write or read an image through a symbolic link.
    case symlinkRefused(String)
    /// Something already exists where a new image was to be written.
    case alreadyExists(String)
    /// The file system ran out of space while writing the image.
    case noSpace(String)
    /// A system call on the image failed.
    case io(String, operation: String, errno: Errno)
    /// A sink was given pages it cannot store (unaligned, partial pages, overlapping runs).
    case invalidPages(String)
    /// A sink was used out of order (pages before `begin`, anything after `finish`/`abort`).
    case sinkState(String)
    /// The `clean_file` pages of a mapping of `file` cannot be read (`detail` says why).
    case unreadableFile(String, file: String, detail: String)
    /// The path given for a new image names no new directory (`.`, `..`, empty).
    case invalidImageName(String)
    /// The address is in no mapping of the newest checkpoint.
    case notMapped(address: UInt64)
    /// The chain does not hold the bytes of this page.
    case notStored(address: UInt64, detail: String)
    /// A checkpoint stream is damaged or cut short.
    case stream(String)

    public var description: String {
        switch self {
        case .notAnImage(let path): return "\(path): not a checkpoint image"
        case .unsupportedVersion(let path, let file, let version):
            // pages.index has one version more than the other files: compressed runs (3).
            let newest = file == ImageFormat.indexName ? Int(ImageFormat.compressedIndexVersion) : CheckpointManifest.readableFormatVersions.upperBound
            return "\(path): unsupported format version \(version) in \(file) (this mitosis reads versions \(CheckpointManifest.readableFormatVersions.lowerBound)–\(newest))"
        case .truncated(let path, let file, let detail): return "\(path): truncated file \(file) (\(detail))"
        case .checksumMismatch(let path, let file, let entry):
            return "\(path): checksum mismatch in \(file)" + (entry.map { " at entry \($0)" } ?? "")
        case .malformed(let path, let file, let detail): return "\(path): malformed \(file): \(detail)"
        case .parentMissing(let path, let parent): return "\(path): parent checkpoint \(parent) is missing"
        case .parentMismatch(let path, let expected, let found):
            return "\(path): parent has id \(found), expected \(expected)"
        case .chainCycle(let path): return "\(path): the parent links form a cycle"
        case .incomplete(let path, let reason): return "\(path): incomplete checkpoint (\(reason))"
        case .symlinkRefused(let path): return "\(path): is a symbolic link; refusing to follow it"
        case .alreadyExists(let path): return "\(path): already exists"
        case .noSpace(let path): return "\(path): no space left on device"
        case .io(let path, let operation, let errno): return "\(path): \(operation) failed: \(errno)"
        case .invalidPages(let detail): return "invalid pages: \(detail)"
        case .sinkState(let detail): return "checkpoint sink used out of order: \(detail)"
        case .unreadableFile(let path, let file, let detail): return "\(path): clean_file pages of \(file) cannot be read: \(detail)"
        case .invalidImageName(let path): return "'\(path)' cannot be a new image directory: give the name of one to create"
        case .notMapped(let address): return "address 0x\(String(address, radix: 16)) is not mapped in this checkpoint"
        case .notStored(let address, let detail):
            return "the page at 0x\(String(address, radix: 16)) is not stored in the chain: \(detail)"
        case .stream(let detail): return "checkpoint stream: \(detail)"
        }
    }
}
