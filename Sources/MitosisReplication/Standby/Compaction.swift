import Foundation
import MitosisImage
import MitosisKernel
import SystemPackage

/// Folds a chain of incremental epochs into one full base, so that a promotion reads at most
/// about `compactEvery` images.
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
    }

    struct Stopped: Error, CustomStringConvertible {
        var description: String { "the standby is stopping" }
    }

    /// Writes the full base of `epoch` as a hidden image; nil when its chain is one image
    /// already. `stopping` is asked between page runs: true abandons the work (nothing left).
    static func writeBase(_ directory: StandbyDirectory, epoch: Epoch, stopping: () -> Bool) throws -> Base? {
        let name = epoch.directoryName
        let newest = try CheckpointImage.open(directory.imagePath(epoch))
        let chain = try newest.chain()
        guard chain.images.count > 1 else { return nil }
        let hidden = "." + name + ".compact"
        directory.remove(hidden)
        var header = CheckpointHeader(id: newest.manifest.id, kind: .full, sequence: 0, pid: newest.manifest.pid, pageSize: newest.manifest.pageSize)
        header.created = newest.manifest.created
        let sink = DirectorySink(directory: directory.epochsPath + "/" + hidden)
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
            if let partial = sink.partialPath {
                var writer = FileDeltaWriter(imageDirectory: partial)
                for (path, file) in try FileDeltaLog.materialize(chain).sorted(by: { $0.key < $1.key }) {
                    var delta = FileDelta(path: path, kind: .removed, offset: 0, size: 0, mode: 0)
                    if !file.removed { delta = FileDelta(path: path, kind: .whole, offset: 0, size: UInt64(file.content.count), mode: file.mode) }
                    var payload: [UInt8] = MessageCoding.encode(delta)
                    payload.append(0)
                    if !file.removed { payload.append(contentsOf: file.content) }
                    try writer.add(payload)
                }
                try writer.seal()
            }
            if stopping() { throw Stopped() }
            try sink.finish(manifest)
        } catch {
            let partial = sink.partialPath
            sink.abort(reason: "compaction failed: \(error)")
            if let partial { try? FileManager.default.removeItem(atPath: partial) }
            directory.remove(hidden)
            throw error
        }
        return Base(epoch: epoch, hidden: hidden,
                    replaced: chain.images.dropFirst().map { $0.path.split(separator: "/").last.map(String.init) ?? "" })
    }

    /// Puts `base` in the place of its epoch's image and removes the chain it replaces.
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
        // Removals need no sync: whatever a crash leaves of them is outside the newest chain,
        // removed at the next start.
        directory.remove(base.hidden)
        for name in base.replaced { directory.remove(name) }
    }
}
