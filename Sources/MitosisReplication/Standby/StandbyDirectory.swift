import Foundation
import MitosisImage
import MitosisKernel
import SystemPackage

/// The layout of a standby's directory:
///
///     DIR/lock            held (flock) by the standby serving DIR, or by `promote`; holds its pid
///     DIR/TERM            the newest term seen, written durably before it is acted on
///     DIR/PROMOTED        the fence: once there, no standby serves DIR again
///     DIR/control         the serving standby's control socket (promote, status)
///     DIR/epochs/000000000042/   one committed image per epoch (chain: ../000000000041 …)
///     DIR/epochs/.…      work in progress (partial images, compaction): removed at start
///     DIR/warm-files/    the warm clone's copies of the data files (`DataFileCopies`), rebuilt with its husk
///
/// Everything else under DIR is left alone.
public struct StandbyDirectory: Sendable {
    public let path: String
    public var epochsPath: String { path + "/epochs" }
    public var lockPath: String { path + "/lock" }
    public var termPath: String { path + "/TERM" }
    public var fencePath: String { path + "/PROMOTED" }
    /// The standby's control socket (`StandbyControl`).
    public var controlPath: String { path + "/control" }
    /// The warm clone's copies of the data files, as of the epoch its husk holds.
    var warmFilesPath: String { path + "/warm-files" }

    public init(_ path: String) {
        var trimmed = path
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        self.path = trimmed
    }

    public func imagePath(_ epoch: Epoch) -> String { epochsPath + "/" + epoch.directoryName }

    /// Whether `promote` fenced this directory.
    public var isPromoted: Bool { (try? Kernel.linkStatusAt(nil, fencePath)) != nil }

    /// The newest term recorded, 0 when none.
    public func readTerm() -> Term {
        guard let bytes = try? Kernel.readFile(termPath, limit: 64),
              let value = UInt64(String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
        else { return Term(0) }
        return Term(value)
    }

    /// Records `term` durably: written to a temporary file, synced, renamed over `TERM`, the
    /// directory synced.
    public func writeTerm(_ term: Term) throws(Errno) {
        let directory = try Kernel.openDirectory(path)
        defer { try? directory.close() }
        let temporary = ".TERM.\(Kernel.currentProcessID())"
        try? Kernel.unlinkAt(directory, temporary)
        let fd = try Kernel.openAt(directory, temporary, options: [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600)
        do {
            try Kernel.writeAll(fd, Array("\(term.rawValue)\n".utf8))
            try Kernel.sync(fd)
            try? fd.close()
        } catch {
            try? fd.close()
            throw error
        }
        try Kernel.rename(directory, temporary, "TERM")
        try Kernel.sync(directory)
    }

    /// The newest committed epoch whose image and whole chain open, with what the scan found
    /// beside it: hidden work files, epochs older than the chain's base (left by a compaction
    /// cut short), and epochs newer than it that do not open.
    public struct Scan: Sendable {
        /// For a tree epoch (`protect --tree`), `image` is its root's image and `tree` the tree.
        public var newest: (epoch: Epoch, image: CheckpointImage)?
        public var tree: TreeImage?
        public var chainLength: Int
        /// Entries of `epochs/` that are not part of the newest chain.
        public var leftovers: [String]
        /// Why newer epochs were passed over, one line each.
        public var skipped: [String]
    }

    public func scan() -> Scan {
        var result = Scan(newest: nil, tree: nil, chainLength: 0, leftovers: [], skipped: [])
        let names = (try? Kernel.listDirectory(epochsPath)) ?? []
        var epochs: [(Epoch, String)] = []
        for name in names {
            if name.hasPrefix(".") { result.leftovers.append(name); continue }
            guard name.count == 12, name.allSatisfy(\.isASCII), let value = UInt64(name) else { continue }
            epochs.append((Epoch(value), name))
        }
        epochs.sort { $0.0 > $1.0 }
        var chain: Set<String> = []
        for (epoch, name) in epochs {
            if result.newest != nil {
                if !chain.contains(name) { result.leftovers.append(name) }
                continue
            }
            do {
                let path = epochsPath + "/" + name
                if TreeImage.isTree(path) {
                    // Every member's chain runs through the same tree epochs (epochs/N/PID).
                    let tree = try TreeImage.open(path)
                    let chains = try tree.members.map { try $0.chain().images }
                    result.newest = (epoch, tree.members[0])
                    result.tree = tree
                    result.chainLength = chains[0].count
                    chain = Set(chains[0].map { ($0.path.split(separator: "/").dropLast().last).map(String.init) ?? "" })
                    continue
                }
                let image = try CheckpointImage.open(path)
                let images = try image.chain().images
                result.newest = (epoch, image)
                result.chainLength = images.count
                chain = Set(images.map { ($0.path.split(separator: "/").last).map(String.init) ?? "" })
            } catch {
                result.skipped.append("epoch \(epoch): \(error)")
                result.leftovers.append(name)
            }
        }
        return result
    }

    /// Removes `name` under `epochs/` and everything in it.
    func remove(_ name: String) {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else { return }
        try? FileManager.default.removeItem(atPath: epochsPath + "/" + name)
    }
}
