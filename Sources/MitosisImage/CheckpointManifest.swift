import Foundation
import MitosisKernel
import MitosisModel

/// Whether a checkpoint holds every page or only those changed since its parent.
public enum CheckpointKind: String, Codable, Sendable, Equatable {
    case full
    case incremental
}

/// The link from an incremental checkpoint to the one it builds on.
public struct ParentLink: Codable, Sendable, Equatable {
    /// The parent image directory, relative to the child's own directory (e.g. `../0001`).
    public var path: String
    /// The parent's `id`; a reader refuses a parent whose manifest says otherwise.
    public var id: String

    public init(path: String, id: String) {
        self.path = path
        self.id = id
    }
}

/// What a sink needs to know before the first page: identity and shape of the checkpoint.
public struct CheckpointHeader: Codable, Sendable, Equatable {
    /// A UUID string, unique per checkpoint.
    public var id: String
    public var kind: CheckpointKind
    /// Required for `.incremental`, absent for `.full`.
    public var parent: ParentLink?
    /// 0 for a full checkpoint, parent's sequence + 1 for each incremental one.
    public var sequence: Int
    public var pid: Int32
    /// ISO 8601 UTC time the checkpoint started.
    public var created: String
    /// The page size every stored run is a multiple of.
    public var pageSize: Int

    public init(id: String = UUID().uuidString, kind: CheckpointKind, parent: ParentLink? = nil, sequence: Int,
                pid: Int32, created: Date = Date(), pageSize: Int = CheckpointHeader.systemPageSize) {
        self.id = id
        self.kind = kind
        self.parent = parent
        self.sequence = sequence
        self.pid = pid
        self.created = created.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
        self.pageSize = pageSize
    }

    /// The system page size (`sysconf(_SC_PAGESIZE)`).
    public static let systemPageSize = Int(PagemapFile.pageSize)
}

/// What a range of pages of a mapping looks like in a checkpoint.
public enum PageState: String, Codable, Sendable, Hashable {
    /// The pages are in this image's `pages.data`.
    case stored
    /// Unchanged since the parent: the newest ancestor that stores them holds their bytes.
    case inherited
    /// File-backed pages never written: their bytes are the mapped file's at
    /// `mapping.offset + (address - mapping.start)`.
    case cleanFile = "clean_file"
    /// Never touched since the mapping was created: they read as zeros.
    case neverTouched = "never_touched"
}

/// A page-aligned range `[start, end)` of one mapping and its state.
public struct PageRange: Codable, Sendable, Hashable {
    public var start: UInt64
    public var end: UInt64
    public var state: PageState

    public init(start: UInt64, end: UInt64, state: PageState) {
        self.start = start
        self.end = end
        self.state = state
    }
}

/// Written straight into the output by `JSONWriter`: a heap mapping has hundreds of ranges, and
/// an epoch's changed mapping is most of what `protect` encodes of its manifest (the rest is
/// reused, `JSONMemo`). Exactly what the synthesized `encode(to:)` gives (the manifest tests
/// compare both with Foundation's `JSONEncoder`).
extension PageRange: JSONNodeConvertible, JSONStreamable {
    package func jsonNode(keys: KeyCache) throws -> JSONNode { .custom(self) }

    package func writeJSON(to output: inout JSONBytes, depth: Int) {
        var first = true
        output.openContainer(UInt8(ascii: "{"))
        output.startEntry(&first, key: "end", depth: depth)
        output.writeDigits(end)
        output.startEntry(&first, key: "start", depth: depth)
        output.writeDigits(start)
        output.startEntry(&first, key: "state", depth: depth)
        output.writeString(state.rawValue)
        output.closeContainer(UInt8(ascii: "}"), depth: depth)
    }
}

/// One mapping of the process at checkpoint time, and where each of its pages is kept.
public struct CheckpointMapping: Codable, Sendable, Hashable {
    public var start: UInt64
    public var end: UInt64
    /// The four permission letters of `/proc/PID/maps` (`rw-p`).
    public var perms: String
    public var offset: UInt64
    /// The backing file or pseudo name (`[heap]`); nil for plain anonymous memory.
    public var path: String?
    /// What backs it (`anonymous`, `file`, `heap`, `stack`… as `MemoryMapping.Kind` names them).
    public var kind: String
    /// Sorted, disjoint ranges inside `[start, end)`. Pages covered by no range are not stored
    /// anywhere (e.g. `[vvar]`): reading them reports so.
    public var pages: [PageRange]
    /// The file `clean_file` pages are read from, as it was at the checkpoint; absent in images
    /// written before it was recorded (their `clean_file` pages cannot be read) and in mappings
    /// whose file could not be identified.
    public var file: MappedFileIdentity?

    public init(start: UInt64, end: UInt64, perms: String, offset: UInt64, path: String?, kind: String, pages: [PageRange],
                file: MappedFileIdentity? = nil) {
        self.start = start
        self.end = end
        self.perms = perms
        self.offset = offset
        self.path = path
        self.kind = kind
        self.pages = pages
        self.file = file
    }
}

/// The page index of one image in numbers (filled in by the sink).
public struct PageIndexSummary: Codable, Sendable, Equatable {
    /// Index entries (contiguous runs of pages).
    public var runs: Int
    /// Pages stored in this image itself, parents excluded.
    public var pages: Int
    /// Bytes of `pages.data`.
    public var bytes: UInt64

    public init(runs: Int = 0, pages: Int = 0, bytes: UInt64 = 0) {
        self.runs = runs
        self.pages = pages
        self.bytes = bytes
    }
}

/// Size and XXH64 (16 hex digits) of one file of an image.
public struct FileDigest: Codable, Sendable, Equatable {
    public var size: UInt64
    public var xxh64: String

    public init(size: UInt64, xxh64: UInt64) {
        self.size = size
        self.xxh64 = Checksum.hex(xxh64)
    }
}

/// How the checkpoint went.
public struct CheckpointStats: Codable, Sendable, Equatable {
    /// How long the target was frozen.
    public var frozenNanoseconds: UInt64
    /// Pages examined to decide what to write.
    public var pagesScanned: Int
    /// Pages handed to the sink.
    public var pagesWritten: Int
    /// Bytes handed to the sink.
    public var bytesWritten: UInt64
    /// Wall time of the whole checkpoint.
    public var durationNanoseconds: UInt64

    public init(frozenNanoseconds: UInt64 = 0, pagesScanned: Int = 0, pagesWritten: Int = 0,
                bytesWritten: UInt64 = 0, durationNanoseconds: UInt64 = 0) {
        self.frozenNanoseconds = frozenNanoseconds
        self.pagesScanned = pagesScanned
        self.pagesWritten = pagesWritten
        self.bytesWritten = bytesWritten
        self.durationNanoseconds = durationNanoseconds
    }
}

/// `manifest.json`: everything known about the process at checkpoint time, and how this image's
/// pages relate to its parent's. See Docs/image-format.md.
public struct CheckpointManifest: Codable, Sendable, Equatable {
    /// 2 added `restore`, which a restore requires.
    public static let currentFormatVersion = 2
    /// Versions this Mitosis reads (version 1 images read, but cannot be restored).
    public static let readableFormatVersions = 1...2

    public var formatVersion: Int
    public var id: String
    public var kind: CheckpointKind
    public var parent: ParentLink?
    public var sequence: Int
    public var pid: Int32
    public var created: String
    public var pageSize: Int
    /// The dirty-tracking strategy that chose the pages (`uffd-wp`, `soft-dirty` or `hash`: `TrackingStrategy.rawValue`).
    public var tracking: String
    /// Everything introspection read about the process (identity, threads, namespaces, limits,
    /// maps, descriptors, IPC); nil when the checkpoint was taken without it.
    public var process: ProcessModel?
    /// The registers and signal state of every thread, read while the process was frozen.
    public var threads: [ThreadState]
    public var mappings: [CheckpointMapping]
    public var stats: CheckpointStats
    /// Filled in by the sink: what `pages.index` holds.
    public var pageIndex: PageIndexSummary
    /// Filled in by the sink: size and checksum of `pages.index` and `pages.data`.
    public var files: [String: FileDigest]
    /// The open descriptors at the freeze (absent from images written without them).
    public var descriptors: [OpenDescriptor]?
    /// What a restore needs beyond memory, threads and descriptors (format version 2 and later;
    /// nil when it could not be captured).
    public var restore: RestoreRecord?

    /// A manifest for the checkpoint `header` began; the sink fills `pageIndex` and `files`.
    public init(header: CheckpointHeader, tracking: String, mappings: [CheckpointMapping], stats: CheckpointStats = CheckpointStats(),
                process: ProcessModel? = nil, threads: [ThreadState] = []) {
        formatVersion = Self.currentFormatVersion
        id = header.id
        kind = header.kind
        parent = header.parent
        sequence = header.sequence
        pid = header.pid
        created = header.created
        pageSize = header.pageSize
        self.tracking = tracking
        self.process = process
        self.threads = threads
        self.mappings = mappings
        self.stats = stats
        pageIndex = PageIndexSummary()
        files = [:]
    }

    /// The header this manifest's checkpoint began with.
    public var header: CheckpointHeader {
        var header = CheckpointHeader(id: id, kind: kind, parent: parent, sequence: sequence, pid: pid, pageSize: pageSize)
        header.created = created
        return header
    }
}
