import Foundation
import MitosisImage
import MitosisKernel
import SystemPackage

/// Folds a chain of incremental epochs (or of tree epochs) into one full base, so that a
/// promotion reads at most about `compactEvery` images.
///
/// Two steps, so that the long one never holds up an acknowledgement. `writeBase` runs in the
/// background while epochs go on being committed: it writes the base of epoch N beside the chain
/// as a hidden image (`.NAME.compact`) with N's id, reading only N's chain (epochs after N are
/// separate directories, nothing it reads changes). `swap` then exchanges it with N's image in
/// one `renameat2(RENAME_EXCHANGE)` and removes the replaced chain: the epochs after N still
/// link to N by path and id, so they now build on the base (their sequence numbers go on from
/// the old chain's: a parent's sequence is below its child's, Docs/image-format.md).
/// A crash before the swap leaves the chain and a hidden image (removed at the next start);
/// after it, the base and older epochs that are no longer part of the newest chain (removed at
/// the next start). Each state holds a valid newest chain.
enum Compaction {
    /// A base written beside the chain, not yet swapped in.
    struct Base: Sendable {
        let epoch: Epoch
        let hidden: String
        /// The names of the images the base replaces, older than `epoch`.
        let replaced: [String]
        /// The base's manifest as written (one process's epoch), to open it without decoding it.
        var manifest: CheckpointManifest? = nil
    }

    struct Stopped: Error, CustomStringConvertible {
        var description: String { "the standby is stopping" }
    }

    /// Writes the full base of `epoch` as a hidden image; nil when its chain is one image
    /// already. `stopping` is asked between page runs: true abandons the work (nothing left).
    /// A tree epoch gets a hidden tree image: each member's chain folded into a full image of
    /// the same id, the tree's data files folded into one `files.log`, the same `tree.json`.
    /// `known`: the epoch's chain as the standby committed it (newest first,
    /// `CheckpointImage.asAncestor()`), so that only the newest manifest is read and decoded
    /// again; nil (or a list that does not link up) reads the chain from the directory.
    static func writeBase(_ directory: StandbyDirectory, epoch: Epoch, known: [CheckpointImage]? = nil, stopping: () -> Bool) throws -> Base? {
        let name = epoch.directoryName
        let hidden = "." + name + ".compact"
        let path = directory.imagePath(epoch)
        if TreeImage.isTree(path) {
            let tree = try TreeImage.open(path)
            let chains = try tree.members.map { try $0.chain() }
            guard chains[0].images.count > 1 else { return nil }
            directory.remove(hidden)
            let writer = try TreeImageWriter(path: directory.epochsPath + "/" + hidden)
            do {
                for (member, chain) in zip(tree.members, chains) {
                    try writeFull(member, chain: chain, to: writer.memberPath(member.manifest.pid), stopping: stopping)
                }
                try writeFiles(try FileDeltaLog.materialize(tree), into: writer.partialPath)
                if stopping() { throw Stopped() }
                try writer.commit(tree.manifest)
            } catch {
                writer.abort()
                directory.remove(hidden)
                throw error
            }
            // The tree epochs the base replaces: those the root's chain went through.
            return Base(epoch: epoch, hidden: hidden, replaced: chains[0].images.dropFirst().map { image in
                image.path.split(separator: "/").dropLast().last.map(String.init) ?? ""
            })
        }
        let newest = try CheckpointImage.open(path)
        let chain: CheckpointChain
        if let known, known.first?.path == path, known.first?.manifest.id == newest.manifest.id,
           let linked = CheckpointChain(linking: [newest] + known.dropFirst()) {
            chain = linked
        } else {
            chain = try newest.chain()
        }
        guard chain.images.count > 1 else { return nil }
        directory.remove(hidden)
        let manifest: CheckpointManifest
        do {
            manifest = try writeFull(chain.newest, chain: chain, to: directory.epochsPath + "/" + hidden, stopping: stopping)
        } catch {
            directory.remove(hidden)
            throw error
        }
        return Base(epoch: epoch, hidden: hidden,
                    replaced: chain.images.dropFirst().map { $0.path.split(separator: "/").last.map(String.init) ?? "" }, manifest: manifest)
    }

    /// Writes `newest` as a full image at `path`: its manifest, every page its chain holds, and
    /// (for one process's epoch) its data files folded from the chain's logs. Returns the
    /// manifest written.
    @discardableResult
    private static func writeFull(_ newest: CheckpointImage, chain: CheckpointChain, to path: String, stopping: () -> Bool) throws -> CheckpointManifest {
        var header = CheckpointHeader(id: newest.manifest.id, kind: .full, sequence: 0, pid: newest.manifest.pid, pageSize: newest.manifest.pageSize)
        header.created = newest.manifest.created
        let sink = DirectorySink(directory: path)
        try sink.begin(header)
        do {
            var manifest = newest.manifest
            manifest.kind = .full
            manifest.parent = nil
            manifest.sequence = 0
            let chunk = UInt64(ImageFormat.maxRunPages * newest.manifest.pageSize)
            for index in manifest.mappings.indices {
                for rangeIndex in manifest.mappings[index].pages.indices {
                    let range = manifest.mappings[index].pages[rangeIndex]
                    guard range.state == .stored || range.state == .inherited else { continue }
                    manifest.mappings[index].pages[rangeIndex].state = .stored
                    var address = range.start
                    while address < range.end {
                        if stopping() { throw Stopped() }
                        let length = min(chunk, range.end - address)
                        try sink.writePages(at: address, try chain.read(address: address, length: Int(length)))
                        address += length
                    }
                }
            }
            // Neighbouring ranges that are now both stored read as one.
            for index in manifest.mappings.indices {
                var merged: [PageRange] = []
                for range in manifest.mappings[index].pages {
                    if let last = merged.last, last.state == range.state, last.end == range.start {
                        merged[merged.count - 1].end = range.end
                    } else {
                        merged.append(range)
                    }
                }
                manifest.mappings[index].pages = merged
            }
            // (A tree member's chain holds none: its tree epochs do.)
            if let partial = sink.partialPath { try writeFiles(try FileDeltaLog.materialize(chain), into: partial) }
            if stopping() { throw Stopped() }
            return try sink.finish(manifest)
        } catch {
            let partial = sink.partialPath
            sink.abort(reason: "compaction failed: \(error)")
            if let partial { try? FileManager.default.removeItem(atPath: partial) }
            throw error
        }
    }

    /// The data files as whole files (or removals) in a new `files.log` in `directory`.
    private static func writeFiles(_ files: [String: MaterializedFile], into directory: String) throws {
        guard !files.isEmpty else { return }
        var writer = FileDeltaWriter(imageDirectory: directory)
        for (path, file) in files.sorted(by: { $0.key < $1.key }) {
            var delta = FileDelta(path: path, kind: .removed, offset: 0, size: 0, mode: 0)
            if !file.removed { delta = FileDelta(path: path, kind: .whole, offset: 0, size: UInt64(file.content.count), mode: file.mode) }
            var payload: [UInt8] = MessageCoding.encode(delta)
            payload.append(0)
            if !file.removed { payload.append(contentsOf: file.content) }
            try writer.add(payload)
        }
        try writer.seal()
    }

    /// Puts `base` in the place of its epoch's image. The chain it replaces (`base.replaced`, and
    /// the epoch's old image, now at `base.hidden`) is left for the caller to remove: nothing
    /// reads it any more, and a crash leaves it to the next start.
    static func swap(_ directory: StandbyDirectory, _ base: Base) throws {
        let epochs = try Kernel.openDirectory(directory.epochsPath)
        defer { try? epochs.close() }
        do {
            try Kernel.renameExchange(epochs, base.hidden, base.epoch.directoryName)
        } catch {
            directory.remove(base.hidden)
            throw error
        }
        try Kernel.sync(epochs)
    }
}
