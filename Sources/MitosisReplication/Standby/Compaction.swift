import Foundation
import MitosisImage
import MitosisKernel
import SystemPackage

/// Folds a chain of incremental epochs into one full base, so that a promotion reads at most
/// `compactEvery` images.
///
/// The base is written beside the chain as a hidden image (`.NAME.compact`) with the newest
/// image's id, then swapped with the newest image in one `renameat2(RENAME_EXCHANGE)`, then
/// the replaced chain is removed. A crash before the swap leaves the chain and a hidden image
/// (removed at the next start); after it, the base and older epochs that are no longer part of
/// the newest chain (removed at the next start). Each state holds a valid newest chain.
enum Compaction {
    static func compact(_ directory: StandbyDirectory, epoch: Epoch) throws {
        let name = epoch.directoryName
        let newest = try CheckpointImage.open(directory.imagePath(epoch))
        let chain = try newest.chain()
        guard chain.images.count > 1 else { return }
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
            try sink.finish(manifest)
        } catch {
            let partial = sink.partialPath
            sink.abort(reason: "compaction failed: \(error)")
            if let partial { try? FileManager.default.removeItem(atPath: partial) }
            directory.remove(hidden)
            throw error
        }
        let epochs = try Kernel.openDirectory(directory.epochsPath)
        defer { try? epochs.close() }
        try Kernel.renameExchange(epochs, hidden, name)
        try Kernel.sync(epochs)
        directory.remove(hidden)
        for image in chain.images.dropFirst() {
            directory.remove(image.path.split(separator: "/").last.map(String.init) ?? "")
        }
        try Kernel.sync(epochs)
    }
}
