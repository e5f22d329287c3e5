import Foundation
import MitosisKernel
import MitosisModel
import SystemPackage

/// What ties the member images of a process tree together (`tree.json`, Docs/image-format.md):
/// the members top-down, their parentage, session and group, and what they share — open file
/// descriptions and anonymous shared memory — which no member's own image can say.
public struct TreeManifest: Codable, Sendable, Equatable {
    public static let formatName = "mitosis-tree"
    public static let version = 1
    public static let fileName = "tree.json"

    public struct Member: Codable, Sendable, Equatable {
        public var pid: Int32
        /// The member's parent (outside the tree for the root).
        public var parent: Int32
        public var session: Int32
        public var processGroup: Int32
        /// Its image's directory name inside the tree image (its pid in decimal) and that image's id.
        public var image: String
        public var imageId: String

        public init(pid: Int32, parent: Int32, session: Int32, processGroup: Int32, image: String, imageId: String) {
            self.pid = pid
            self.parent = parent
            self.session = session
            self.processGroup = processGroup
            self.image = image
            self.imageId = imageId
        }
    }

    /// Descriptor `fd` of member `pid` is the open file description of `ownerFd` in `owner`,
    /// a member before it (kcmp at the checkpoint). Sockets and pipes are not listed: one
    /// socket, or one pipe end, is one description, known by its inode.
    public struct SharedFile: Codable, Sendable, Equatable {
        public var pid: Int32
        public var fd: Int32
        public var owner: Int32
        public var ownerFd: Int32

        public init(pid: Int32, fd: Int32, owner: Int32, ownerFd: Int32) {
            self.pid = pid
            self.fd = fd
            self.owner = owner
            self.ownerFd = ownerFd
        }
    }

    /// The anonymous shared mapping at `start` in member `pid` is the object `owner` maps at
    /// `ownerStart` (same shmem inode at the checkpoint): restore maps that one object again.
    public struct SharedMemory: Codable, Sendable, Equatable {
        public var pid: Int32
        public var start: UInt64
        public var owner: Int32
        public var ownerStart: UInt64

        public init(pid: Int32, start: UInt64, owner: Int32, ownerStart: UInt64) {
            self.pid = pid
            self.start = start
            self.owner = owner
            self.ownerStart = ownerStart
        }
    }

    public var format = TreeManifest.formatName
    public var formatVersion = TreeManifest.version
    public var id: String
    public var created: String
    public var root: Int32
    /// Top-down: every member comes after its parent; the root first.
    public var members: [Member]
    public var sharedFiles: [SharedFile]
    public var sharedMemory: [SharedMemory]
    /// Pipes (by inode) of which the tree held one end only and no process at all held the
    /// other (a writer whose reader exited): restore creates them and closes the missing end.
    public var lonePipes: [UInt64]?

    public init(id: String = UUID().uuidString.lowercased(), created: String = ISO8601DateFormatter().string(from: Date()),
                root: Int32, members: [Member], sharedFiles: [SharedFile], sharedMemory: [SharedMemory], lonePipes: [UInt64]? = nil) {
        self.id = id
        self.created = created
        self.root = root
        self.members = members
        self.sharedFiles = sharedFiles
        self.sharedMemory = sharedMemory
        self.lonePipes = lonePipes
    }

    public func member(_ pid: Int32) -> Member? { members.first { $0.pid == pid } }

    /// Every rule a reader checks (an image is hostile input): empty when consistent.
    public func problems() -> [String] {
        var problems: [String] = []
        if format != Self.formatName { problems.append("format '\(format)', expected '\(Self.formatName)'") }
        if formatVersion != Self.version { problems.append("format version \(formatVersion), this mitosis reads \(Self.version)") }
        guard let first = members.first, first.pid == root else { return problems + ["the root \(root) is not the first member"] }
        var order: [Int32: Int] = [:]
        for (index, member) in members.enumerated() {
            if member.pid <= 0 { problems.append("member pid \(member.pid)") }
            if order[member.pid] != nil { problems.append("member \(member.pid) listed twice") }
            if member.image != String(member.pid) { problems.append("member \(member.pid) names image '\(member.image)'") }
            if index > 0, order[member.parent] == nil { problems.append("member \(member.pid)'s parent \(member.parent) is not a member before it") }
            order[member.pid] = index
        }
        for shared in sharedFiles {
            guard let index = order[shared.pid], let owner = order[shared.owner], owner < index, shared.fd >= 0, shared.ownerFd >= 0 else {
                problems.append("shared file fd \(shared.fd) of \(shared.pid): owner \(shared.owner) is not a member before it")
                continue
            }
        }
        for shared in sharedMemory {
            guard let index = order[shared.pid], let owner = order[shared.owner], owner < index else {
                problems.append("shared memory 0x\(String(shared.start, radix: 16)) of \(shared.pid): owner \(shared.owner) is not a member before it")
                continue
            }
        }
        return problems
    }
}

/// A committed image of a process tree: a directory holding `tree.json` and one checkpoint
/// image per member, named by its pid. Written into `.NAME.partial-<id>` and renamed into place
/// once complete, so that a tree image exists whole or not at all.
public struct TreeImage: Sendable {
    public let path: String
    public let manifest: TreeManifest
    /// The members' images, in the manifest's order.
    public let members: [CheckpointImage]

    /// Whether `path` holds a tree image (a `tree.json`), rather than one process's image.
    public static func isTree(_ path: String) -> Bool {
        (try? Kernel.status(path + "/" + TreeManifest.fileName)) != nil
    }

    /// Opens and checks a tree image: its manifest (at most 16 MiB, consistent), every member's
    /// image (checked as `CheckpointImage.open` checks it), each the one recorded (id, pid).
    public static func open(_ path: String) throws(ImageError) -> TreeImage {
        let file = path + "/" + TreeManifest.fileName
        let bytes: [UInt8]
        do {
            let status = try Kernel.linkStatusAt(nil, file)
            guard status.type == .regular else { throw ImageError.malformed(path, file: TreeManifest.fileName, detail: "not a regular file") }
            guard status.size <= 16 << 20 else { throw ImageError.malformed(path, file: TreeManifest.fileName, detail: "\(status.size) bytes") }
            bytes = try Kernel.readFile(file)
        } catch let error as ImageError {
            throw error
        } catch {
            throw .io(path, operation: "read \(TreeManifest.fileName)", errno: error as? Errno ?? .ioError)
        }
        let manifest: TreeManifest
        do { manifest = try JSONOutput.decoder().decode(TreeManifest.self, from: Data(bytes)) } catch {
            throw .malformed(path, file: TreeManifest.fileName, detail: "\(error)")
        }
        if let problem = manifest.problems().first { throw .malformed(path, file: TreeManifest.fileName, detail: problem) }
        var members: [CheckpointImage] = []
        for member in manifest.members {
            let image = try CheckpointImage.open(path + "/" + member.image)
            guard image.manifest.id == member.imageId, image.manifest.pid == member.pid else {
                throw .malformed(path, file: TreeManifest.fileName, detail: "member \(member.pid): image \(member.image) is process \(image.manifest.pid) with id \(image.manifest.id), expected \(member.imageId)")
            }
            members.append(image)
        }
        return TreeImage(path: path, manifest: manifest, members: members)
    }
}

/// Writes a tree image: member images go into `memberPath`, then `commit` writes `tree.json`
/// and renames the whole directory into place; `abort` removes everything written.
public final class TreeImageWriter: @unchecked Sendable {  // used by one task at a time
    public let path: String
    private let partial: String
    private var done = false

    /// Refuses an existing `path`; creates `.NAME.partial-<id>` beside it (mode 0700).
    public init(path: String) throws(ImageError) {
        var trimmed = path
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        self.path = trimmed
        let parent = try DirectorySink.container(of: trimmed)
        let name = String(trimmed.split(separator: "/").last ?? "")
        if (try? Kernel.linkStatusAt(nil, trimmed)) != nil { throw .alreadyExists(trimmed) }
        partial = (parent == "." ? "" : parent + "/") + ".\(name).partial-\(UUID().uuidString.lowercased())"
        try DirectorySink.createDirectories(parent)
        try DirectorySink.createDirectories(partial)
    }

    /// Where member `pid`'s image is written (with a `DirectorySink`).
    public func memberPath(_ pid: Int32) -> String { partial + "/\(pid)" }

    /// The partial directory, where files of the tree's own (a standby's `files.log`) are
    /// written before `commit`.
    public var partialPath: String { partial }

    /// Writes `tree.json`, syncs it and the directory, renames the directory to `path` and
    /// syncs its parent: once this returns, the tree image survives a crash whole.
    public func commit(_ manifest: TreeManifest) throws(ImageError) {
        let file = partial + "/" + TreeManifest.fileName
        do {
            var bytes = try JSONOutput.bytes(manifest)
            bytes.append(UInt8(ascii: "\n"))
            let fd = try Kernel.openAt(nil, file, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
            defer { try? fd.close() }
            try bytes.withUnsafeBytes { buffer in try Kernel.writeAll(fd, buffer) }
            try Kernel.sync(fd)
            let directory = try Kernel.openDirectory(partial)
            defer { try? directory.close() }
            try Kernel.sync(directory)
            try Kernel.renameNoReplace(nil, partial, path)
            done = true
            let parent = try Kernel.openDirectory(try DirectorySink.container(of: path))
            defer { try? parent.close() }
            try Kernel.sync(parent)
        } catch let error as Errno {
            throw .io(path, operation: "commit the tree image", errno: error)
        } catch {
            throw .io(path, operation: "commit the tree image", errno: .ioError)
        }
    }

    /// Removes the partial directory and everything in it: a failed tree dump leaves nothing.
    public func abort() {
        guard !done else { return }
        done = true
        try? FileManager.default.removeItem(atPath: partial)
    }
}
